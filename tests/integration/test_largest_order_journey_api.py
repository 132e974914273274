"""The largest order the API takes through every order operation, in-process on moto, where every
DynamoDB request is checked as AWS checks it (tests/aws_request_limits.py: a 4 KB expression, a
255-byte placeholder, an IN of 100): an adapter that builds an expression per line, per key, per
shipment or per status meets its largest here. 100 lines (lines of one sku stay separate lines, so
98 of them are 98 reservation keys in one stock item, the most one item can be asked about at
once), skus of the longest length, three locations at max_shipments 3."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.builders import location_body, product_body
from tests.e2e.client import order_body
from tests.integration.conftest import pass_through_workflow
from tests.integration.in_process import InProcessApi, in_process_api_with_labels, run_to_allocated, stocked_alike

MANY = "SKU-MANY-" + "m" * 119  # 128 characters, the longest sku
ONE = "SKU-ONE-" + "o" * 120
OTHER = "SKU-OTHER-" + "t" * 118
LATER = "SKU-LATER-" + "l" * 118  # backordered: none in stock until it arrives
# Each sku at a location of its own, with room for an edit that reserves anew before it releases.
STOCK = {MANY: ("loc-" + "a" * 60, 400), ONE: ("loc-" + "b" * 60, 10), OTHER: ("loc-" + "c" * 60, 10)}
LINES = [{"sku": MANY, "quantity": 1}] * 98 + [{"sku": ONE, "quantity": 2}, {"sku": OTHER, "quantity": 2}]


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started:
        for sku, (location_id, on_hand) in STOCK.items():
            assert started.put(f"/locations/{location_id}", json=location_body()).status_code == 201
            assert started.put(f"/products/{sku}", json=product_body("3.00")).status_code == 201
            answer = started.put(f"/inventory/{sku}/{location_id}", json={"on_hand": on_hand})
            assert answer.status_code == 200, answer.text
        rules = started.put("/sourcing/rules", json={"max_shipments": 3, "prefer": "nearest"})
        assert rules.status_code == 200, rules.text
        yield started


def _placed(api: InProcessApi, **overrides: Any) -> dict[str, Any]:
    answer = api.post("/orders", json=order_body(**{"lines": LINES, **overrides}))
    assert answer.status_code == 201, answer.text
    return answer.json()


def _edited(api: InProcessApi, order: dict[str, Any], **body: Any) -> dict[str, Any]:
    answer = api.request("PATCH", f"/orders/{order['id']}", headers={"If-Match": str(order["version"])}, json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _stock(api: InProcessApi, sku: str) -> dict[str, Any]:
    (level,) = api.get(f"/inventory/{sku}").json()["locations"]
    return level


def test_the_largest_order_is_placed_held_edited_cut_shipped_delivered_and_listed(api):
    order = _placed(api)
    assert len(order["lines"]) == 100

    order = run_to_allocated(api, order["id"])
    assert sorted(s["location_id"] for s in order["shipments"]) == sorted(loc for loc, _ in STOCK.values())
    assert _stock(api, MANY)["reserved"] == 98

    held = api.post(f"/orders/{order['id']}/hold", json={"reason": "customer_request", "note": "n" * 500})
    assert held.status_code == 200, held.text
    released = api.post(f"/orders/{order['id']}/release", json={})
    assert released.status_code == 200, released.text
    order = released.json()
    assert order["status"] == "allocated", order["status"]

    moved = _edited(api, order, shipping_method="express")
    # Every line edited anew: new line ids, the reservations moved to them in each stock item.
    order = _edited(api, moved, lines=[{**line, "quantity": line["quantity"] + 1} for line in LINES])
    if order["status"] != "allocated":
        order = run_to_allocated(api, order["id"])
    assert _stock(api, MANY)["reserved"] == 196
    order = _edited(api, order, lines=LINES)
    if order["status"] != "allocated":
        order = run_to_allocated(api, order["id"])
    assert _stock(api, MANY)["reserved"] == 98

    many = [line["line_id"] for line in order["lines"] if line["sku"] == MANY]
    cut = api.post(
        f"/orders/{order['id']}/cancel",
        json={"reason": "customer_request", "lines": [{"line_id": line_id, "quantity": 1} for line_id in many[:60]]},
    )
    assert cut.status_code == 200, cut.text
    order = cut.json()
    assert _stock(api, MANY)["reserved"] == 38

    first, *others = order["shipments"]
    shipped = api.post(f"/orders/{order['id']}/shipments/{first['id']}/ship", json={})
    assert shipped.status_code == 200, shipped.text
    batch = api.post(
        "/shipments/confirmations",
        json={"items": [{"order_id": order["id"], "shipment_id": s["id"], "action": action}
                        for action in ("ship", "deliver") for s in others]
              + [{"order_id": order["id"], "shipment_id": first["id"], "action": "deliver"}]},
    )  # fmt: skip
    assert batch.status_code == 200, batch.text
    assert all(result["error"] is None for result in batch.json()["items"]), batch.text
    order = api.get(f"/orders/{order['id']}").json()
    assert order["status"] == "delivered", order["status"]
    assert order["payment"]["captured"] == order["totals"]["grand_total"]
    assert _stock(api, MANY)["reserved"] == 0

    history = api.get(f"/orders/{order['id']}/history").json()["items"]
    assert history[0]["type"] == "created"
    listed = api.get("/orders", params={"customer_id": order["customer"]["id"]}).json()["items"]
    assert [o["id"] for o in listed] == [order["id"]]


def test_a_second_largest_order_stalled_marked_late_restarted_parked_and_cancelled_whole_releases_every_key(
    api, monkeypatch
):
    from functions.bootstrap import Config, bootstrap

    pass_through_workflow(monkeypatch)
    order = _placed(api)
    steps = bootstrap(Config.from_env()).workflow
    steps.authorize_payment(order["id"], attempt=0)
    steps.reserve_stock(order["id"])  # and its workflow died there
    assert _stock(api, MANY)["reserved"] == 98
    stalled = api.get(f"/orders/{order['id']}").json()["status"]

    first, second = (datetime.now(UTC) + timedelta(days=n) for n in (1, 2))
    assert order["id"] in bootstrap(Config.from_env(), clock=lambda: first).jeopardy_scan.run().marked
    late = api.get("/orders", params={"jeopardy": "true"}).json()["items"]
    assert [(o["id"], o["jeopardy"]["status"]) for o in late] == [(order["id"], stalled)]
    assert bootstrap(Config.from_env(), clock=lambda: first).reconciler.run().restarted == [order["id"]]
    assert bootstrap(Config.from_env(), clock=lambda: second).reconciler.run().parked == [order["id"]]
    assert api.get(f"/orders/{order['id']}").json()["status"] == "on_hold"

    cancelled = api.post(f"/orders/{order['id']}/cancel", json={"reason": "customer_request"})
    assert cancelled.status_code == 200, cancelled.text
    assert (cancelled.json()["status"], cancelled.json()["jeopardy"]) == ("cancelled", None)
    assert _stock(api, MANY)["reserved"] == 0
    listed = api.get("/orders", params={"status": "cancelled", "customer_id": order["customer"]["id"]}).json()["items"]
    assert [o["id"] for o in listed] == [order["id"]]


def test_the_largest_backordered_order_is_filled_whole_by_one_arrival(api, monkeypatch):
    from core.errors import Backordered
    from functions.backorders import app
    from functions.bootstrap import Config, bootstrap
    from tests.integration.test_backorders import Context, record

    pass_through_workflow(monkeypatch)
    location_id = STOCK[MANY][0]
    assert api.put(f"/products/{LATER}", json=product_body("3.00", allow_backorder=True)).status_code == 201
    order = api.post("/orders", json=order_body(lines=[{"sku": LATER, "quantity": 1}] * 100)).json()
    steps = bootstrap(Config.from_env()).workflow
    steps.authorize_payment(order["id"], attempt=0)
    with pytest.raises(Backordered):
        steps.reserve_stock(order["id"])

    assert api.put(f"/inventory/{LATER}/{location_id}", json={"on_hand": 100}).status_code == 200
    with app.container.override(bootstrap(Config.from_env())):
        answer = app.lambda_handler({"Records": [record(location_id, 0, 100, sku=LATER)]}, Context())

    assert answer == {"batchItemFailures": []}
    steps.create_shipments(order["id"])  # what the started execution runs
    order = api.get(f"/orders/{order['id']}").json()
    assert order["status"] == "allocated"
    assert [(s["location_id"], len(s["lines"])) for s in order["shipments"]] == [(location_id, 100)]
    (level,) = api.get(f"/inventory/{LATER}").json()["locations"]
    assert (level["on_hand"], level["reserved"]) == (100, 100)


def test_the_largest_order_of_100_skus_is_allocated_over_three_locations_and_cancelled_whole(api):
    # 100 stock items, reserved by ReserveStock and released by the cancel; not the stock moves'
    # transactions of 99 items beside the order (test_dynamodb_adapters.py's
    # test_moves_over_more_stock_items_than_a_transaction_holds_...). The products and their stock
    # written by the repositories (what PUT /products and PUT /inventory write, without 200
    # requests through the gateway: ~4 s of CPU, the routes being no subject here; stocked_alike).
    from functions.bootstrap import Config, bootstrap

    skus = [f"SKU-{n:03d}-" + "x" * 120 for n in range(1, 101)]
    locations = [location_id for location_id, _ in STOCK.values()]
    stocked_alike(bootstrap(Config.from_env()), [(sku, locations[n % 3]) for n, sku in enumerate(skus)], 5, "3.00")
    lines = [{"sku": sku, "quantity": 2} for sku in skus]
    order = run_to_allocated(api, _placed(api, lines=lines)["id"])
    assert sorted(s["location_id"] for s in order["shipments"]) == sorted(locations)

    cancelled = api.post(f"/orders/{order['id']}/cancel", json={"reason": "customer_request"})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    for sku in skus[::33]:
        (level,) = api.get(f"/inventory/{sku}").json()["locations"]
        assert (level["on_hand"], level["reserved"]) == (5, 0)
