"""Sourcing rules and what-if over the in-process API on moto: versions kept in the Catalog table,
the admin scope, the version an allocation used in the order's history, and a simulation of 100
orders that makes one read of the locations and one batched read of the stock."""

from __future__ import annotations

import random
import string
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from core import hookimpl
from core.models import Allocation
from core.sourcing import MAX_REASON_CHARS, MAX_REASONS
from core.workflow_types import SourcingPlan
from tests.e2e.client import Catalog, assert_error, order_body, put_network, unique
from tests.integration.in_process import InProcessApi, in_process_api_with_labels, issue, run_to_allocated


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started:
        yield started


@pytest.fixture(scope="module")
def network(api: InProcessApi) -> dict[str, str]:
    return put_network(api)


def put_rules(api: InProcessApi, **body: Any) -> dict[str, Any]:
    response = api.put("/sourcing/rules", json={"prefer": "nearest", **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_rules_are_read_by_any_key_replaced_by_admin_only_and_every_version_is_kept(api: InProcessApi, network):
    reader = issue(api, "orders:read")
    start = api.get("/sourcing/rules", key=reader).json()["version"]

    first = put_rules(api, excluded_locations=[network["east"]], safety_stock={network["west"]: 2}, max_shipments=2)
    second = put_rules(api, prefer="fewest_shipments")

    assert (first["version"], second["version"]) == (start + 1, start + 2)
    assert second["excluded_locations"] == [] and second["max_shipments"] is None  # a PUT replaces
    assert api.get("/sourcing/rules", key=reader).json() == second
    assert_error(api.put("/sourcing/rules", key=reader, json={"prefer": "nearest"}), 403, "forbidden")
    assert_error(api.put("/sourcing/rules", json={"prefer": "nearest", "max_shipments": 0}), 422)
    assert_error(api.put("/sourcing/rules", json={"max_shipments": 2}), 422)  # prefer is required
    history = api.get("/sourcing/rules/history", params={"limit": 1}).json()
    assert [r["version"] for r in history["items"]] == [second["version"]]
    older = api.get("/sourcing/rules/history", params={"limit": 1, "cursor": history["next_cursor"]}).json()
    assert older["items"] == [first]
    assert_error(api.get("/sourcing/rules/history", params={"cursor": "bogus"}), 422, "invalid_cursor")


def test_an_allocation_names_the_rules_version_it_used_in_the_history(api: InProcessApi, network):
    from functions.api.dependencies import container

    catalog = Catalog(api)
    sku = catalog.product("9.00")
    catalog.stock(sku, network["west"], 10)
    catalog.stock(sku, network["east"], 10)
    rules = put_rules(api, excluded_locations=[network["west"]])
    order = api.post("/orders", json=order_body((sku, 2))).json()

    workflow = container().workflow
    workflow.authorize_payment(order["id"], attempt=0)
    workflow.reserve_stock(order["id"])

    stored = api.get(f"/orders/{order['id']}").json()
    assert [(a["location_id"], a["quantity"]) for a in stored["allocations"]] == [(network["east"], 2)]
    history = api.get(f"/orders/{order['id']}/history").json()["items"]
    [reserved] = [e for e in history if e["type"] == "stock_reserved"]
    assert reserved["detail"]["sourcing_rules_version"] == rules["version"]
    put_rules(api)  # back to the defaults for the other tests


def test_an_order_no_plan_ships_within_max_shipments_is_409_at_capture_not_cancelled_later(api: InProcessApi, network):
    catalog = Catalog(api)
    sku = catalog.product("9.00")
    catalog.stock(sku, network["west"], 1)
    catalog.stock(sku, network["east"], 1)
    put_rules(api, max_shipments=1)
    try:
        refused = assert_error(api.post("/orders", json=order_body((sku, 2))), 409, "insufficient_stock")
        assert [d["field"] for d in refused["details"]] == ["lines[0].quantity"]
        assert api.post("/orders", json=order_body((sku, 1))).status_code == 201
    finally:
        put_rules(api)  # back to the defaults for the other tests


def test_a_simulation_of_100_orders_reads_locations_and_stock_once_and_reserves_nothing(api: InProcessApi, network):
    from functions.api.dependencies import container

    catalog = Catalog(api)
    skus = [catalog.product("5.00") for _ in range(3)]
    for sku in skus:
        catalog.stock(sku, network["west"], 40)
        catalog.stock(sku, network["east"], 400)
    before = {sku: api.get(f"/inventory/{sku}").json() for sku in skus}
    bodies = [order_body(*[(sku, 1 + n % 2) for sku in skus]) for n in range(100)]
    for body in bodies:
        body["shipping_address"].update(latitude=37.77, longitude=-122.42)
    planner = issue(api, "orders:read")
    calls: Counter[str] = Counter()
    client = container().dynamodb
    client.meta.events.register("before-call.dynamodb", lambda model, **_: calls.update([model.name]))

    nearest = api.post("/sourcing/simulate", json={"orders": bodies}, key=planner)
    counted = dict(calls)
    fewest = api.post("/sourcing/simulate", json={"orders": bodies, "rules": {"max_shipments": 1}})

    assert nearest.status_code == 200, nearest.text
    # The rules (one Query), the network (one GetItem), the products and the stock (a BatchGetItem
    # each: 3 skus x 2 locations is one batch), and each sku's backorder queue (one Query each,
    # empty: no order waits); the API key's lookup is the authorizer's, with its own client.
    assert counted == {"Query": 1 + 3, "GetItem": 1, "BatchGetItem": 2}
    summary = nearest.json()["summary"]
    assert summary["orders"] == 100 and summary["unfillable_units"] == 0
    assert fewest.json()["summary"]["shipments"] == 100 and fewest.json()["rules"]["max_shipments"] == 1
    assert {sku: api.get(f"/inventory/{sku}").json() for sku in skus} == before
    assert api.get("/sourcing/rules").json()["max_shipments"] is None  # a what-if changes no rule
    assert_error(api.post("/sourcing/simulate", json={"orders": bodies}, key=issue(api, "inventory:write")), 403)


def test_a_what_if_for_a_body_with_an_unknown_sku_is_422_as_placing_it_is(api: InProcessApi, network):
    body = order_body((unique("NOSUCH"), 1))

    assert_error(api.post("/orders", json=body), 422, "unknown_sku")
    refused = assert_error(api.post("/sourcing/simulate", json={"orders": [body]}), 422, "unknown_sku")
    assert refused["details"][0]["field"] == "orders[0].lines[0].sku"


def test_a_what_if_for_a_body_in_a_currency_a_product_has_no_price_in_is_422_as_placing_it_is(
    api: InProcessApi, network
):
    catalog = Catalog(api)
    priced, unpriced = catalog.product("4.00", "EUR"), catalog.product("5.00")
    for sku in (priced, unpriced):
        catalog.stock(sku, network["east"], 10)
    body = order_body((priced, 1), (unpriced, 1), (unpriced, 2), currency="EUR")

    placed = assert_error(api.post("/orders", json=body), 422, "no_price")
    bodies = [order_body((priced, 1), currency="EUR"), body, order_body((priced, 3))]
    refused = assert_error(api.post("/sourcing/simulate", json={"orders": bodies}), 422, "no_price")

    assert refused["message"] == placed["message"] == f"no price for {unpriced} in EUR"
    assert placed["details"] == [
        {"field": "lines[1].sku", "message": "no price in EUR"},
        {"field": "lines[2].sku", "message": "no price in EUR"},
    ]
    assert refused["details"] == [
        *[{**detail, "field": f"orders[1].{detail['field']}"} for detail in placed["details"]],
        {"field": "orders[2].lines[0].sku", "message": "no price in USD"},  # the EUR product, in USD
    ]
    plan = api.post("/sourcing/simulate", json={"orders": bodies[:1]})
    assert plan.status_code == 200, plan.text


@pytest.fixture(scope="module")
def beside_far_stores(api: InProcessApi) -> tuple[dict[str, Any], dict[int, str]]:
    """Six warehouses near San Francisco, nearest first, three of which (0, 3 and 4) have the order
    together where greedy takes five, and 24 stores far off with a unit of A each (6 to 29): the
    order's body and the locations' ids by number. Placing the order reserves nothing here (the
    workflow's steps are not run), so each test places it from the same stock."""
    catalog = Catalog(api)
    skus = {name: catalog.product("3.00") for name in "ABCD"}
    stocked = {
        0: {"A": 5, "B": 2, "C": 6, "D": 4},
        1: {"A": 5, "B": 1, "D": 1},
        2: {"A": 5, "B": 2, "C": 1, "D": 2},
        3: {"A": 4, "B": 5, "C": 4},
        4: {"A": 4, "C": 4, "D": 6},
        5: {"A": 5, "C": 5, "D": 5},
    } | {6 + i: {"A": 1} for i in range(24)}
    ids = {}
    for n, units in stocked.items():
        place = (37.79, -122.40 + 0.5 * (n + 1)) if n < 6 else (45.0, -110.0 + n)
        ids[n] = catalog.location(latitude=place[0], longitude=place[1])
        for name, quantity in units.items():
            catalog.stock(skus[name], ids[n], quantity)
    body = order_body((skus["A"], 7), (skus["B"], 6), (skus["C"], 2), (skus["D"], 8))
    body["shipping_address"].update(latitude=37.79, longitude=-122.40)
    return body, ids


def _sourced_beside_far_stores(
    api: InProcessApi, world: tuple[dict[str, Any], dict[int, str]], max_shipments: int, excluded: int | None = None
) -> None:
    """Under `fewest_shipments` and `max_shipments` (and the far store numbered `excluded` left out
    by the rules), the what-if plans the order from warehouses 0, 3 and 4 and POST places it."""
    body, ids = world
    put_rules(
        api, prefer="fewest_shipments", max_shipments=max_shipments,
        excluded_locations=[] if excluded is None else [ids[excluded]],
    )  # fmt: skip
    try:
        simulated = api.post("/sourcing/simulate", json={"orders": [body]})
        placed = api.post("/orders", json={**body, "external_id": unique("far")})  # an order of its own
    finally:
        put_rules(api)  # back to the defaults for the other tests

    assert simulated.status_code == 200, simulated.text
    [plan] = simulated.json()["items"]
    assert plan["unfillable"] == []
    assert sorted(shipment["location_id"] for shipment in plan["shipments"]) == sorted([ids[0], ids[3], ids[4]])
    assert placed.status_code == 201, placed.text


def test_raising_max_shipments_never_refuses_an_order_a_lower_limit_ships(api: InProcessApi, beside_far_stores):
    # Twenty-nine locations hold some of the order (beyond the exact search: the built-in plugin
    # splits it greedily, over five of them; the rules exclude the thirtieth) and three have it all.
    # Under max_shipments 3 it was placed and planned from those three; raised to 4, it was 409
    # insufficient_stock and the what-if said ReserveStock would cancel it: the groups of up to four
    # were too many to search, so none was, where those of two and three were few enough
    # (C(29,2) + C(29,3) = 4060 <= 2^EXACT_SEARCH_LIMIT, C(29,4) alone beyond it).
    _sourced_beside_far_stores(api, beside_far_stores, max_shipments=4, excluded=29)


def test_an_order_three_near_warehouses_ship_is_placed_under_max_shipments_3_beside_many_far_stores(
    api: InProcessApi, beside_far_stores
):
    # 24 far stores with a unit of A each beside the six warehouses: the groups of two and three of
    # the 30 locations were too many for the search within max_shipments 3, so none was searched:
    # the order was 409 insufficient_stock, though every far store is outheld by nearer warehouses.
    # Thirty is the fewest where they are too many: C(30,2) + C(30,3) = 4495 > 2^EXACT_SEARCH_LIMIT.
    _sourced_beside_far_stores(api, beside_far_stores, max_shipments=3)


def test_a_what_if_for_an_unknown_order_id_names_it_in_the_details(api: InProcessApi, network):
    # The 422 had no details at all, where API.md's error shape names the offending field: a
    # client simulating many orders had to read the message to find which id was wrong.
    catalog = Catalog(api)
    sku = catalog.product("4.00")
    catalog.stock(sku, network["east"], 10)
    placed = api.post("/orders", json=order_body((sku, 1)))
    assert placed.status_code == 201, placed.text
    unknown = "ord_" + "y" * 24

    refused = api.post("/sourcing/simulate", json={"orders": [placed.json()["id"], unknown]})

    error = assert_error(refused, 422, "validation_error")
    assert error["details"] == [{"field": "orders[1]", "message": "no order with this id"}]


def test_two_changes_racing_for_one_version_number_keep_the_first_and_the_other_is_409(api: InProcessApi):
    from core.errors import StaleVersion
    from core.models import utc_now
    from core.sourcing_rules import SourcingRulesInput, next_version
    from functions.api.dependencies import container

    store = container().sourcing_rules
    read = store.current()
    mine = next_version(read, SourcingRulesInput(max_shipments=3), at=utc_now(), by="key_a")
    theirs = next_version(read, SourcingRulesInput(max_shipments=4), at=utc_now(), by="key_b")

    store.add(mine)
    with pytest.raises(StaleVersion):
        store.add(theirs)
    assert store.current() == mine
    put_rules(api)  # back to the defaults for the other tests


def test_a_change_made_from_a_version_someone_has_replaced_since_is_409_with_if_match(api: InProcessApi, network):
    # Two operators read the same version; one excludes a location, then the other, who has not
    # seen it, caps shipments. A PUT replaces the rules whole, so without the version check the
    # second would silently drop the first one's exclusion.
    seen = api.get("/sourcing/rules").json()["version"]
    excluded = api.put("/sourcing/rules", headers={"If-Match": f'"{seen}"'},
                       json={"prefer": "nearest", "excluded_locations": [network["east"]]})  # fmt: skip
    assert excluded.status_code == 200, excluded.text

    blind = api.put("/sourcing/rules", headers={"If-Match": str(seen)}, json={"prefer": "nearest", "max_shipments": 1})

    assert_error(blind, 409, "version_conflict")
    assert blind.json()["error"]["details"] == [
        {"field": "If-Match", "message": f"current version is {excluded.json()['version']}"}
    ]
    assert api.get("/sourcing/rules").json() == excluded.json()
    assert_error(api.put("/sourcing/rules", headers={"If-Match": "v1"}, json={"prefer": "nearest"}), 400)
    put_rules(api)  # without If-Match a PUT replaces whatever is current: back to the defaults


def test_a_put_sent_again_answers_the_rules_in_force_and_makes_no_second_version(api: InProcessApi, network):
    # A PUT is idempotent: an editor's PUT that timed out, sent again with the If-Match it read,
    # was 409 version_conflict against its own change, and without If-Match made a second version
    # of the same rules (each one re-sourcing the backordered orders that wait under them).
    seen = api.get("/sourcing/rules").json()["version"]
    body = {"prefer": "nearest", "max_shipments": 3, "excluded_locations": [network["east"]]}
    first = api.put("/sourcing/rules", headers={"If-Match": str(seen)}, json=body)
    assert first.status_code == 200 and first.json()["version"] == seen + 1, first.text

    again = api.put("/sourcing/rules", headers={"If-Match": str(seen)}, json=body)
    plain = api.put("/sourcing/rules", json=body)

    assert again.status_code == plain.status_code == 200, (again.text, plain.text)
    assert again.json() == plain.json() == first.json() == api.get("/sourcing/rules").json()
    history = api.get("/sourcing/rules/history", params={"limit": 2}).json()["items"]
    assert history[0] == first.json() and [r["version"] for r in history[1:]] == ([seen] if seen else [])
    # Other rules from the version read are still a change its author has not seen: 409.
    assert_error(
        api.put("/sourcing/rules", headers={"If-Match": str(seen)}, json={**body, "max_shipments": 4}),
        409,
        "version_conflict",
    )
    put_rules(api)  # back to the defaults for the other tests


def test_the_rules_in_force_are_read_consistently(api: InProcessApi):
    # An eventually consistent read just after a PUT may still show the version before it: a PUT
    # that follows with If-Match of the version it was just answered would be refused as stale,
    # and an allocation would use the rules the operator has just replaced.
    from functions.api.dependencies import container

    queries: list[dict[str, Any]] = []
    client = container().dynamodb
    handler = client.meta.events.register(
        "provide-client-params.dynamodb.Query", lambda params, **_: queries.append(dict(params))
    )
    try:
        container().sourcing_rules.current()
    finally:
        client.meta.events.unregister("provide-client-params.dynamodb.Query", handler)

    assert [q.get("ConsistentRead") for q in queries] == [True]


def test_capture_counts_only_the_stock_the_rules_let_allocation_take(api: InProcessApi, network):
    from infra.local.stack import forget_warm_containers

    catalog = Catalog(api)
    sku = catalog.product("9.00")
    catalog.stock(sku, network["west"], 10)
    catalog.stock(sku, network["east"], 3)
    version = put_rules(api, excluded_locations=[network["west"]], safety_stock={network["east"]: 1})["version"]
    # A container reads the rules at most OMS_CATALOG_CACHE_SECONDS old: a new one reads them now.
    forget_warm_containers()
    try:
        refused = api.post("/orders", json=order_body((sku, 3)))
        assert_error(refused, 409, "insufficient_stock")
        assert refused.json()["error"]["details"] == [
            {
                "field": "lines[0].quantity",
                "message": f"2 of {sku} available under sourcing rules v{version}, 3 ordered",
            },
        ]
        assert api.post("/orders", json=order_body((sku, 2))).status_code == 201
    finally:
        put_rules(api)  # back to the defaults for the other tests
        forget_warm_containers()


def test_a_channel_key_cannot_simulate_another_channels_order_nor_tell_it_exists(api: InProcessApi, network):
    catalog = Catalog(api)
    sku = catalog.product("4.00")
    catalog.stock(sku, network["east"], 10)
    web = api.post("/orders", json=order_body((sku, 2), channel="web"))
    pos = api.post("/orders", json=order_body((sku, 1), channel="pos"))
    assert web.status_code == pos.status_code == 201, (web.text, pos.text)
    created = api.post("/api-keys", json={"name": unique("key"), "scopes": ["orders:read"], "channel": "pos"})
    pos_key = created.json()["key"]
    unknown = "ord_" + "z" * 24

    others = api.post("/sourcing/simulate", json={"orders": [web.json()["id"]]}, key=pos_key)
    nothing = api.post("/sourcing/simulate", json={"orders": [unknown]}, key=pos_key)
    own = api.post("/sourcing/simulate", json={"orders": [pos.json()["id"]]}, key=pos_key)

    # Another channel's order answers exactly as an order that does not exist: no lines, no
    # distances to its customer's address, not even that the id names an order.
    assert_error(others, 422)
    assert_error(nothing, 422)
    assert others.json()["error"]["code"] == nothing.json()["error"]["code"]
    assert others.json()["error"]["message"].replace(web.json()["id"], unknown) == nothing.json()["error"]["message"]
    assert own.status_code == 200, own.text
    assert own.json()["items"][0]["order_id"] == pos.json()["id"]
    assert api.post("/sourcing/simulate", json={"orders": [web.json()["id"]]}).status_code == 200  # the admin sees all


def test_rules_naming_a_location_the_network_lacks_are_refused_and_change_nothing(api: InProcessApi, network):
    # A typo ("wh-esat") would otherwise be stored as a rule that holds back or excludes nothing,
    # while the operator believes the location excluded or its safety stock kept.
    before = api.get("/sourcing/rules").json()
    typo = unique("loc-typo")

    excluded = api.put("/sourcing/rules", json={"prefer": "nearest", "excluded_locations": [network["east"], typo]})
    kept = api.put("/sourcing/rules", json={"prefer": "nearest", "safety_stock": {typo: 2, network["west"]: 1}})
    what_if = api.post(
        "/sourcing/simulate", json={"orders": [order_body(("ANY", 1))], "rules": {"excluded_locations": [typo]}}
    )

    assert_error(excluded, 422, "unknown_location", "excluded_locations[1]")
    assert_error(kept, 422, "unknown_location", f"safety_stock.{typo}")
    assert_error(what_if, 422, "unknown_location", "rules.excluded_locations[0]")
    assert api.get("/sourcing/rules").json() == before


class Talkative:
    """A sourcing plugin that takes every unit from one location and explains it at great length:
    400 reasons of 2,000 characters that hardly compress (800 KB, about 570 KB zlib-compressed: past
    an item's 400 KB)."""

    def __init__(self, location_id: str):
        self.location_id = location_id

    @hookimpl(tryfirst=True)
    def oms_source_order(self, order):
        words = random.Random(7)
        return SourcingPlan(
            allocations=[Allocation(line_id=line.line_id, location_id=self.location_id, quantity=line.quantity)
                         for line in order.lines],
            reasons=["".join(words.choices(string.ascii_letters, k=2_000)) for _ in range(400)],
        )  # fmt: skip


def test_a_plugin_that_gives_too_many_or_too_long_reasons_still_sources_the_order(api: InProcessApi, network):
    # The reasons go into the order's history, in its one DynamoDB item: unbounded, they took it
    # past 400 KB and the reservation failed on every retry, parking a paid order.
    from functions.api.dependencies import container

    catalog = Catalog(api)
    sku = catalog.product("9.00")
    catalog.stock(sku, network["east"], 10)
    order = api.post("/orders", json=order_body((sku, 2))).json()
    plugin = Talkative(network["east"])
    container().plugins.register(plugin, name="talkative")
    try:
        workflow = container().workflow
        workflow.authorize_payment(order["id"], attempt=0)
        workflow.reserve_stock(order["id"])
    finally:
        container().plugins.unregister(plugin)

    stored = api.get(f"/orders/{order['id']}").json()
    assert [(a["location_id"], a["quantity"]) for a in stored["allocations"]] == [(network["east"], 2)]
    history = api.get(f"/orders/{order['id']}/history").json()["items"]
    [reserved] = [e for e in history if e["type"] == "stock_reserved"]
    *kept, last = reserved["detail"]["reasons"]
    assert len(kept) == MAX_REASONS - 1
    assert all(len(reason) == MAX_REASON_CHARS and reason.endswith("…") for reason in kept)
    assert last == f"and {400 - MAX_REASONS + 1} more reasons the sourcing plugin gave, not kept"


def test_a_what_if_for_an_order_holding_stock_counts_the_units_it_holds_as_its_own(api: InProcessApi, network):
    from core.errors import Backordered
    from functions.api.dependencies import container

    catalog = Catalog(api)
    sku = catalog.product("6.00", allow_backorder=True)
    catalog.stock(sku, network["west"], 2)
    placed = api.post("/orders", json=order_body((sku, 5)))
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["id"]
    workflow = container().workflow
    workflow.authorize_payment(order_id, attempt=0)
    with pytest.raises(Backordered):
        workflow.reserve_stock(order_id)
    assert api.get(f"/orders/{order_id}").json()["status"] == "backordered"

    [item] = api.post("/sourcing/simulate", json={"orders": [order_id]}).json()["items"]

    # Sourced again (an edit), or filled, the order keeps the 2 units it holds: the what-if shows
    # them as its plan, not as units no location has.
    line_id = item["unfillable"][0]["line_id"]
    assert [(s["location_id"], s["lines"]) for s in item["shipments"]] == [
        (network["west"], [{"line_id": line_id, "sku": sku, "quantity": 2}])
    ]
    assert item["unfillable"] == [{"line_id": line_id, "sku": sku, "quantity": 3}]


def test_a_pickup_at_a_store_the_rules_exclude_is_409_at_capture_whether_or_not_its_products_may_wait(
    api: InProcessApi, network
):
    from infra.local.stack import forget_warm_containers
    from tests.e2e.client import PICKUP_STORE

    catalog = Catalog(api)
    store = unique("loc-store")
    assert api.put(f"/locations/{store}", json=PICKUP_STORE).status_code == 201
    waits, cannot = catalog.product("7.00", allow_backorder=True), catalog.product("7.00")
    catalog.stock(cannot, store, 5)
    pickup = {"type": "pickup", "location_id": store}
    put_rules(api, excluded_locations=[store])
    forget_warm_containers()  # a container reads the rules at most OMS_CATALOG_CACHE_SECONDS old
    try:
        assert_error(api.post("/orders", json=order_body((cannot, 1), fulfillment=pickup)), 409, "insufficient_stock")
        # Accepted (201), it was authorized and then cancelled out_of_stock: no location may ever supply it.
        refused = api.post("/orders", json=order_body((waits, 1), fulfillment=pickup))
        error = assert_error(refused, 409, "insufficient_stock")
        assert [d["field"] for d in error["details"]] == ["lines[0].quantity"]
    finally:
        put_rules(api)  # back to the defaults for the other tests
        forget_warm_containers()


def test_a_what_if_for_a_cancelled_order_plans_the_units_its_cancel_took(api: InProcessApi, network):
    """A cancel takes every unit of an order (its lines at zero, as API.md says), and a what-if of
    the order planned nothing: an operator asking whether orders cancelled out of stock would have
    been filled under other rules got empty plans. It plans the units the cancel took (its history
    entry's `lines`), and not those an earlier cancel of units took."""
    catalog = Catalog(api)
    sku = catalog.product("6.00")
    catalog.stock(sku, network["east"], 10)
    placed = api.post("/orders", json=order_body((sku, 5)))
    assert placed.status_code == 201, placed.text
    order_id, line_id = placed.json()["id"], placed.json()["lines"][0]["line_id"]
    run_to_allocated(api, order_id)
    one = {"reason": "one less", "lines": [{"line_id": line_id, "quantity": 1}]}
    fewer = api.post(f"/orders/{order_id}/cancel", json=one)
    assert fewer.status_code == 200, fewer.text
    cancelled = api.post(f"/orders/{order_id}/cancel", json={"reason": "changed mind"})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["lines"][0]["quantity"] == 0

    [item] = api.post("/sourcing/simulate", json={"orders": [order_id]}).json()["items"]

    assert [(s["location_id"], s["lines"]) for s in item["shipments"]] == [
        (network["east"], [{"line_id": line_id, "sku": sku, "quantity": 4}])
    ]
    assert item["unfillable"] == []


@pytest.mark.parametrize("allow_backorder", [False, True])
def test_safety_stock_set_after_an_order_reserved_its_units_does_not_take_them_from_it_when_it_is_edited(
    api: InProcessApi, network, allow_backorder
):
    # Safety stock is held back from orders' *available* units; the units an order holds are its
    # own. Set after an order took the last units at a location, it must not stop the order's edit
    # (a new address) nor, sourced again, make it give them back and wait or end out of stock.
    from infra.local.stack import forget_warm_containers

    catalog = Catalog(api)
    sku = catalog.product("8.00", allow_backorder=allow_backorder)
    catalog.stock(sku, network["west"], 2)
    order = run_to_allocated(api, api.post("/orders", json=order_body((sku, 2))).json()["id"])
    put_rules(api, safety_stock={network["west"]: 2})
    forget_warm_containers()  # the API reads the rules now
    try:
        address = {**order["shipping_address"], "line1": "2 Market St"}
        edited = api.request(
            "PATCH", f"/orders/{order['id']}", json={"shipping_address": address},
            headers={"If-Match": str(order["version"])},
        )  # fmt: skip
        assert edited.status_code == 200, edited.text

        again = run_to_allocated(api, order["id"])  # sourced again: the workflow the edit started

        assert [(a["location_id"], a["quantity"]) for a in again["allocations"]] == [(network["west"], 2)]
        [level] = api.get(f"/inventory/{sku}").json()["locations"]
        assert (level["on_hand"], level["reserved"], level["available"]) == (2, 2, 0)
        [simulated] = api.post("/sourcing/simulate", json={"orders": [order["id"]]}).json()["items"]
        assert simulated["unfillable"] == [] and [s["location_id"] for s in simulated["shipments"]] == [network["west"]]
    finally:
        put_rules(api)  # back to the defaults for the other tests
        forget_warm_containers()


def test_a_what_if_plans_at_most_500_order_lines_in_all_whether_bodies_or_stored_orders(api: InProcessApi, network):
    # Bounded only by 100 orders and 256 KiB, a body of 100 orders of 45 lines each, over 12
    # locations that each have a part of every line, planned for 4.7 s on this machine's two cores
    # (a set-cover search per order): the API function has 10 s on a third of a core (512 MB), so
    # any `orders:read` key could make the what-if time out, a 5xx. 500 lines take a ninth of that.
    catalog = Catalog(api)
    sku = catalog.product("2.00")
    catalog.stock(sku, network["west"], 500)
    long_body = order_body(*[(sku, 1)] * 100)
    placed = api.post("/orders", json=long_body)
    assert placed.status_code == 201, placed.text
    stored = placed.json()["id"]

    bodies_at_the_bound = api.post("/sourcing/simulate", json={"orders": [long_body] * 5})
    ids_at_the_bound = api.post("/sourcing/simulate", json={"orders": [stored] * 5})
    too_many_bodies = api.post("/sourcing/simulate", json={"orders": [long_body] * 5 + [order_body((sku, 1))]})
    too_many_ids = api.post("/sourcing/simulate", json={"orders": [stored] * 6})

    assert bodies_at_the_bound.status_code == ids_at_the_bound.status_code == 200, bodies_at_the_bound.text
    assert bodies_at_the_bound.json()["summary"]["unfillable_units"] == 0
    for refused in (too_many_bodies, too_many_ids):
        error = assert_error(refused, 422, "validation_error")
        assert error["details"] == [{"field": "orders", "message": "at most 500 order lines in all"}]


def test_a_channel_key_simulates_bodies_of_its_own_channel_only_as_it_places_them(api: InProcessApi, network):
    # POST /orders answers such a key 403 for another channel's body; the what-if planned it (and
    # a sourcing plugin may source one channel's orders apart from another's).
    catalog = Catalog(api)
    sku = catalog.product("3.00")
    catalog.stock(sku, network["west"], 5)
    own, other = order_body((sku, 1), channel="pos"), order_body((sku, 1), channel="web")

    reader = issue(api, "orders:read", channel="pos")

    placed = api.post("/orders", json=other, key=issue(api, "orders:write", channel="pos"))
    simulated = api.post("/sourcing/simulate", json={"orders": [own, other]}, key=reader)
    planned = api.post("/sourcing/simulate", json={"orders": [own]}, key=reader)

    assert_error(placed, 403, "forbidden")
    error = assert_error(simulated, 403, "forbidden")
    assert error["details"] == [{"field": "orders[1].channel", "message": "this API key simulates channel pos only"}]
    assert planned.status_code == 200, planned.text


def test_the_what_if_of_an_order_that_would_wait_backordered_says_so(api: InProcessApi, network):
    # Its only reasons were the rules' name and the plugin's for the part in stock, none of which
    # said that the rest would wait (rather than be cancelled, whose reason is given); with no part
    # in stock, the plugin's one reason is "the order has no units to source".
    catalog = Catalog(api)
    sku = catalog.product("6.00", allow_backorder=True)
    catalog.stock(sku, network["west"], 1)

    short, whole = (
        api.post("/sourcing/simulate", json={"orders": [order_body((sku, quantity))]}).json()["items"][0]
        for quantity in (3, 1)
    )
    west_excluded = {"orders": [order_body((sku, 3))], "rules": {"excluded_locations": [network["west"]]}}
    nothing_now = api.post("/sourcing/simulate", json=west_excluded).json()["items"][0]

    waits = "allocation would hold what is planned and wait backordered for the unfillable units"
    assert waits in short["reasons"] and short["unfillable"][0]["quantity"] == 2
    assert waits in nothing_now["reasons"] and nothing_now["shipments"] == []
    assert waits not in whole["reasons"] and whole["unfillable"] == []


def test_a_safety_stock_of_zero_is_no_safety_stock_and_makes_no_version(api: InProcessApi, network):
    # {"loc": 0} holds nothing back, as {} does, but was kept as other rules: a PUT of it made a
    # version (and woke every backordered order) that changed nothing, and so did the PUT of {} after.
    current = put_rules(api)

    zero = put_rules(api, safety_stock={network["west"]: 0, network["east"]: 2})

    assert zero["version"] == current["version"] + 1 and zero["safety_stock"] == {network["east"]: 2}
    assert put_rules(api, safety_stock={network["east"]: 2})["version"] == zero["version"]
    sku = Catalog(api).product("2.00")
    Catalog(api).stock(sku, network["east"], 1)
    what_if = {"orders": [order_body((sku, 1))], "rules": {"safety_stock": {network["east"]: 0}}}
    simulated = api.post("/sourcing/simulate", json=what_if).json()
    assert simulated["rules"]["safety_stock"] == {} and simulated["items"][0]["reasons"][0] == (
        f"sourcing rules v{zero['version']} with safety_stock as given"
    )
    put_rules(api)  # back to the defaults for the other tests


def test_the_what_if_of_a_body_the_rules_leave_no_location_says_placing_it_would_be_refused(api: InProcessApi, network):
    """A planner asking what pausing fulfilment does to new orders read "allocation would wait
    backordered for all of it", while POST /orders refuses such an order 409 before it is ever
    allocated. A body's plan now says so; a stored order's (placed already) does not."""
    catalog = Catalog(api)
    sku = catalog.product("6.00", allow_backorder=True)
    catalog.stock(sku, network["west"], 5)
    stored = api.post("/orders", json=order_body((sku, 1)))
    assert stored.status_code == 201, stored.text
    locations = api.get("/locations", params={"limit": 100}).json()
    assert locations["next_cursor"] is None
    every = [loc["location_id"] for loc in locations["items"]]
    refused = "placed now, this order would be refused (409 insufficient_stock): no location may supply it"

    body_plan, stored_plan, in_stock = (
        api.post("/sourcing/simulate", json={"orders": orders, "rules": rules}).json()["items"][0]
        for orders, rules in (
            ([order_body((sku, 2))], {"excluded_locations": every}),
            ([stored.json()["id"]], {"excluded_locations": every}),
            ([order_body((sku, 2))], {}),
        )
    )

    assert refused in body_plan["reasons"], body_plan["reasons"]
    assert refused not in stored_plan["reasons"], stored_plan["reasons"]
    assert refused not in in_stock["reasons"] and in_stock["unfillable"] == [], in_stock
    put_rules(api, excluded_locations=every)
    try:
        assert_error(api.post("/orders", json=order_body((sku, 2))), 409, "insufficient_stock")
    finally:
        put_rules(api)  # back to the defaults for the other tests


def test_the_what_if_of_an_order_the_rules_leave_no_location_says_what_allocation_would_do(api: InProcessApi, network):
    """Rules excluding every location: it said each would be cancelled out_of_stock, though
    ReserveStock makes an order whose products may wait wait backordered, and parks one whose units
    only the settings keep from it; only one whose units are nowhere is cancelled."""
    catalog = Catalog(api)
    may_wait, on_the_shelf, nowhere = (
        catalog.product("6.00", allow_backorder=True),
        catalog.product("6.00"),
        catalog.product("6.00"),
    )
    catalog.stock(may_wait, network["west"], 5)
    catalog.stock(on_the_shelf, network["east"], 5)
    catalog.stock(nowhere, network["east"], 1)
    locations = api.get("/locations", params={"limit": 100}).json()
    assert locations["next_cursor"] is None
    rules = {"excluded_locations": [loc["location_id"] for loc in locations["items"]]}
    bodies = [order_body((may_wait, 2)), order_body((on_the_shelf, 2)), order_body((nowhere, 2))]

    simulated = api.post("/sourcing/simulate", json={"orders": bodies, "rules": rules})

    assert simulated.status_code == 200, simulated.text
    waits, parked, cancelled = (item["reasons"] for item in simulated.json()["items"])
    wait = "allocation would wait backordered for all of it until the rules or the network give it a location"
    hold = ("allocation would put this order on hold for a person, its payment kept: the locations the rules "
            "and the network leave out have its units")  # fmt: skip
    cancel = ("allocation would cancel this order out_of_stock: no plan covers, from the locations that may "
              "supply it, what may not wait backordered")  # fmt: skip
    assert "no location may supply this order under these rules" in waits + parked + cancelled
    assert (wait in waits, hold in waits, cancel in waits) == (True, False, False), waits
    assert (wait in parked, hold in parked, cancel in parked) == (False, True, False), parked
    assert (wait in cancelled, hold in cancelled, cancel in cancelled) == (False, False, True), cancelled
