"""The API joins each route module on first use: the map from a request to its module, and the scopes it checks."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from functions.api.access import requirement_of
from functions.api.app import ROUTE_MODULES, every_route, modules_for

ROOT = Path(__file__).resolve().parents[2]


def routes() -> list:
    app = every_route()
    return app._static_routes + app._dynamic_routes


def module_of(route) -> str:
    return route.func.__module__.removeprefix("functions.api.routes.")


def a_path(resource: str, value: str) -> str:
    """A request path of `resource`, each parameter given `value`."""
    return re.sub(r"\{[^}]+\}", value, resource)


def test_every_route_module_is_joined_and_serves_a_route():
    assert sorted({module_of(route) for route in routes()}) == sorted(ROUTE_MODULES)


def test_a_routes_resource_names_the_module_that_serves_it_and_only_that():
    for route in routes():
        assert modules_for(route.openapi_path) == {module_of(route)}, route.openapi_path


def test_a_path_no_entry_names_joins_every_module():
    for path in ["/", "", "/v1/orders", "/unknown", "/{proxy+}"]:
        assert modules_for(path) == set(ROUTE_MODULES), path


@pytest.mark.parametrize("value", ["ord_2222222222222222222222a2", "hold", "history", "reorder", "x"])
def test_no_two_routes_of_a_method_match_one_path(value: str):
    # So which route serves a request cannot depend on the order the modules were joined in.
    every = routes()
    for route in every:
        path = a_path(route.openapi_path, value)
        matching = [other.openapi_path for other in every if other.method == route.method and other.rule.match(path)]
        assert matching == [route.openapi_path], (route.method, path)


def test_the_routes_stay_in_module_order_whatever_order_requests_joined_them():
    # The OpenAPI document lists the routes in this order.
    for kind in (every_route()._static_routes, every_route()._dynamic_routes):
        ranks = [ROUTE_MODULES.index(module_of(route)) for route in kind]
        assert ranks == sorted(ranks)


# A fresh interpreter joins the routers as requests arrive: each route is checked against the
# scope table that its own first request saw, in an order that starts with the heaviest group.
FIRST_REQUESTS = """
import json, sys
from functions.api import app
seen = {}
for method, resource, path in json.loads(sys.argv[1]):
    table = app._routed({"httpMethod": method, "resource": resource, "path": path})
    seen[f"{method} {resource}"] = repr(table.requirement(method, resource))
print(json.dumps(seen))
"""


def test_each_routes_first_request_checks_the_scope_it_declares():
    every = routes()
    declared = {f"{route.method.upper()} {route.openapi_path}": repr(requirement_of(route.func)) for route in every}
    # The orders group first, then the others: every route is then the first of its module
    # or joined alongside others, never looked up in a table that lacks it.
    order = sorted(every, key=lambda route: (not route.openapi_path.startswith("/orders"), route.openapi_path))
    requests = [(route.method.upper(), route.openapi_path, a_path(route.openapi_path, "v1")) for route in order]
    out = subprocess.run(
        [sys.executable, "-c", FIRST_REQUESTS, json.dumps(requests)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == declared
    assert "None" not in declared.values()


# A request in a second thread while the first joins the holds module: it must wait for (or read)
# a scope table holding the module's routes, never read the table from before the join, where the
# route would be unknown and pass the scope check as public.
JOIN_RACE = """
import threading, time
import functions.api.app as app
from functions.api.access import PUBLIC, ScopeTable

built, release = threading.Event(), threading.Event()
original = ScopeTable.__init__

def slow(self, *args, **kwargs):
    original(self, *args, **kwargs)
    if threading.current_thread().name == "first":
        built.set()
        release.wait(10)

ScopeTable.__init__ = slow
first = threading.Thread(target=app._join, args=(["holds"],), name="first")
first.start()
built.wait(10)
seen = []
def request():
    seen.append(app._join(["holds"]).requirement("POST", "/orders/{order_id}/hold"))

second = threading.Thread(target=request)
second.start()
time.sleep(0.2)  # the second request has reached the join (or returned) by now
release.set()
first.join(10)
second.join(10)
print(seen[0] is not PUBLIC)
"""


def test_a_request_racing_a_modules_join_never_reads_a_table_without_its_routes():
    out = subprocess.run([sys.executable, "-c", JOIN_RACE], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
