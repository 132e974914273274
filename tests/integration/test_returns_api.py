"""Returns through the in-process API on moto: the Returns table, the restock transaction, return
labels in S3, the order's returned units and status, lists and channel visibility."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any
from unittest.mock import ANY

import boto3
import pytest

from tests.builders import address_body, location_body, order_body
from tests.e2e.client import TOKYO, Catalog, assert_error, unique
from tests.integration.in_process import InProcessApi, in_process_api_with_labels, issue, returns_run_inline


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    """The in-process API, with the returns workflow's steps run inline when a receipt starts it
    (the state machine itself runs in tests/integration/test_return_workflow_in_interpreter.py)."""
    with in_process_api_with_labels() as started, returns_run_inline():
        yield started


def run_workflow(order_id: str) -> None:
    """The order workflow's steps, as the state machine runs them (it does not run in-process)."""
    from functions.bootstrap import Config, bootstrap

    workflow = bootstrap(Config.from_env()).workflow
    workflow.authorize_payment(order_id, attempt=0)
    workflow.reserve_stock(order_id)
    workflow.create_shipments(order_id)


def an_order(
    api: InProcessApi, quantity: int = 3, *, ship: bool = True, token: str = "tok_approve"
) -> tuple[dict[str, Any], str, str]:
    """A placed and allocated order of one new product (shipped and delivered when `ship`), its sku
    and the warehouse it left from."""
    catalog = Catalog(api)
    warehouse = catalog.location()
    sku = catalog.product("10.00", weight_grams=300)
    catalog.stock(sku, warehouse, 10)
    channel = f"web-{uuid.uuid4().hex[:8]}"
    body = order_body(
        channel=channel,
        external_id=unique("ext"),
        lines=[{"sku": sku, "quantity": quantity}],
        payment={"method": "test", "token": token},
    )
    placed = api.post("/orders", json=body)
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["id"]
    run_workflow(order_id)
    order = api.get(f"/orders/{order_id}").json()
    return (delivered(api, order) if ship else order), sku, warehouse


def delivered(api: InProcessApi, order: dict[str, Any]) -> dict[str, Any]:
    """The order once each of its parcels shipped and was delivered (a pickup's: readied and collected)."""
    pickup = order["fulfillment"]["type"] == "pickup"
    for shipment in order["shipments"]:
        for action in ("ready", "deliver") if pickup else ("ship", "deliver"):
            done = api.post(f"/orders/{order['id']}/shipments/{shipment['id']}/{action}", json={})
            assert done.status_code == 200, done.text
    return api.get(f"/orders/{order['id']}").json()


def return_body(quantity: int, reason_code: str = "size_or_fit") -> dict[str, Any]:
    return {"lines": [{"line_id": "L1", "quantity": quantity, "reason": "too big", "reason_code": reason_code}]}


def on_hand(api: InProcessApi, sku: str, location_id: str) -> int:
    stock = api.get(f"/inventory/{sku}").json()
    return next(loc["on_hand"] for loc in stock["locations"] if loc["location_id"] == location_id)


def test_a_return_received_in_mixed_condition_restocks_the_resellable_units(api: InProcessApi):
    order, sku, warehouse = an_order(api, 3)
    before = on_hand(api, sku, warehouse)

    created = api.post(f"/orders/{order['id']}/returns", json=return_body(2))
    assert created.status_code == 201, created.text
    rma = created.json()
    assert rma["id"].startswith("rma_") and rma["status"] == "authorized" and rma["order_id"] == order["id"]
    assert rma["label_url"].startswith("http") and "Signature" in rma["label_url"]
    assert (rma["refund"], rma["fee"]) == ({"amount": "0.00", "currency": "USD"},) * 2

    receipt = {
        "location_id": warehouse,
        "lines": [
            {"line_id": "L1", "quantity": 1, "condition": "resellable"},
            {"line_id": "L1", "quantity": 1, "condition": "damaged"},
        ],
    }
    received = api.post(f"/returns/{rma['id']}/receive", json=receipt)

    assert received.status_code == 200, received.text
    line = received.json()["lines"][0]
    assert (received.json()["status"], line["received_quantity"], line["condition"]) == ("refunded", 2, "mixed")
    assert on_hand(api, sku, warehouse) == before + 1
    after = api.get(f"/orders/{order['id']}").json()
    assert after["status"] == "partially_returned"
    assert (after["lines"][0]["shipped_quantity"], after["lines"][0]["returned_quantity"]) == (3, 2)
    history = api.get(f"/orders/{order['id']}/history").json()["items"]
    assert [e["type"] for e in history if e["type"].startswith("return_")] == ["return_requested", "return_received"]
    refunds = api.get(f"/orders/{order['id']}/refunds").json()["items"]
    assert [(r["amount"], r["status"]) for r in refunds] == [(received.json()["refund"], "succeeded")]
    # Two thirds of the line's 32.18 (3 x 10.00 and 2.18 California tax), rounded half-even.
    assert after["lines"][0]["total"]["amount"] == "32.18"
    assert received.json()["refund"] == {"amount": "21.45", "currency": "USD"}
    assert after["payment"]["refunded"] == received.json()["refund"]

    again = api.post(f"/returns/{rma['id']}/receive", json=receipt)
    assert again.status_code == 200
    assert on_hand(api, sku, warehouse) == before + 1
    assert api.get(f"/orders/{order['id']}").json()["version"] == after["version"]

    # Another count of the same parcel is refused, not answered as if it were recorded.
    recount = {"location_id": warehouse, "lines": [{"line_id": "L1", "quantity": 2, "condition": "resellable"}]}
    assert_error(api.post(f"/returns/{rma['id']}/receive", json=recount), 409, "invalid_transition")
    assert api.get(f"/returns/{rma['id']}").json() == again.json() | {"label_url": ANY}
    assert on_hand(api, sku, warehouse) == before + 1


def test_units_back_where_on_hand_is_at_the_cap_are_refunded_not_restocked_and_the_history_names_them(
    api: InProcessApi,
):
    # The warehouse counted 1,000,000,000 units since (the most a stock take may record). Before, the
    # restock transaction added the returned units past it. Now its stock write is refused by its own
    # condition, its ledger item records the refusal (a receipt repeated restocks nothing), and the
    # return is still counted on the order and refunded.
    order, sku, warehouse = an_order(api, 2)
    Catalog(api).stock(sku, warehouse, 1_000_000_000)
    rma = api.post(f"/orders/{order['id']}/returns", json=return_body(2)).json()
    receipt = {"location_id": warehouse, "lines": [{"line_id": "L1", "quantity": 2, "condition": "resellable"}]}

    received = api.post(f"/returns/{rma['id']}/receive", json=receipt)
    again = api.post(f"/returns/{rma['id']}/receive", json=receipt)

    assert (received.status_code, received.json()["status"], again.status_code) == (200, "refunded", 200)
    assert on_hand(api, sku, warehouse) == 1_000_000_000
    after = api.get(f"/orders/{order['id']}").json()
    assert (after["status"], after["lines"][0]["returned_quantity"]) == ("returned", 2)
    history = api.get(f"/orders/{order['id']}/history").json()["items"]
    [entry] = [e for e in history if e["type"] == "return_received"]
    assert (entry["detail"]["restocked"], entry["detail"]["not_restocked"]) == (
        [], [{"line_id": "L1", "quantity": 2, "reason": "stock_limit_reached"}]
    )  # fmt: skip


def test_the_last_units_back_make_the_order_returned(api: InProcessApi):
    order, _, warehouse = an_order(api, 1)
    rma = api.post(f"/orders/{order['id']}/returns", json=return_body(1, "defective")).json()

    receipt = {"location_id": warehouse, "lines": [{"line_id": "L1", "quantity": 1, "condition": "damaged"}]}
    assert api.post(f"/returns/{rma['id']}/receive", json=receipt).status_code == 200

    after = api.get(f"/orders/{order['id']}").json()
    assert after["status"] == "returned"
    # The whole order, defective: its shipping comes back too.
    assert after["payment"]["refunded"] == after["totals"]["grand_total"]
    assert rma["refund_shipping_with_whole_order"] is True


def test_shipping_comes_back_with_the_last_unit_of_the_order_not_with_a_return_that_counted_on_another(
    api: InProcessApi,
):
    # Two returns of one unit each, both damaged: the first to arrive does not bring the whole order
    # back (the other may never come), so only the second's refund gives the shipping back.
    order, _, warehouse = an_order(api, 2)
    first, second = (api.post(f"/orders/{order['id']}/returns", json=return_body(1, "damaged")).json() for _ in "ab")
    receipt = {"location_id": warehouse, "lines": [{"line_id": "L1", "quantity": 1, "condition": "damaged"}]}
    unit = order["lines"][0]["total"]["amount"]
    shipping = order["totals"]["shipping"]["amount"]

    early = api.post(f"/returns/{second['id']}/receive", json=receipt).json()
    late = api.post(f"/returns/{first['id']}/receive", json=receipt).json()

    half = (Decimal(unit) / 2).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)
    assert early["refund"]["amount"] == str(half)
    assert late["refund"]["amount"] == str(Decimal(unit) - half + Decimal(shipping))
    after = api.get(f"/orders/{order['id']}").json()
    assert after["payment"]["refunded"] == after["totals"]["grand_total"]


def test_returning_more_than_shipped_is_422_and_nothing_shipped_is_409(api: InProcessApi):
    order, _, _ = an_order(api, 2)
    assert_error(api.post(f"/orders/{order['id']}/returns", json=return_body(3)), 422, None, "lines[0].quantity")

    pending, _, _ = an_order(api, 1, ship=False)
    assert_error(api.post(f"/orders/{pending['id']}/returns", json=return_body(1)), 409, "nothing_shipped")


def test_receiving_more_than_authorized_is_422(api: InProcessApi):
    order, _, warehouse = an_order(api, 2)
    rma = api.post(f"/orders/{order['id']}/returns", json=return_body(1)).json()

    receipt = {"location_id": warehouse, "lines": [{"line_id": "L1", "quantity": 2, "condition": "resellable"}]}
    assert_error(api.post(f"/returns/{rma['id']}/receive", json=receipt), 422, None, "lines[0].quantity")
    assert api.get(f"/returns/{rma['id']}").json()["status"] == "authorized"


def test_a_receipt_at_a_location_the_network_lacks_is_422_unknown_location_as_a_purchase_order_is(
    api: InProcessApi,
):
    # It answered `validation_error`, where POST /purchase-orders and PUT /sourcing/rules answer an
    # unknown location with `unknown_location`: one mistake, one code to handle.
    order, _, _ = an_order(api, 2)
    rma = api.post(f"/orders/{order['id']}/returns", json=return_body(1)).json()

    receipt = {"location_id": "loc-nowhere", "lines": [{"line_id": "L1", "quantity": 1, "condition": "resellable"}]}
    refused = assert_error(api.post(f"/returns/{rma['id']}/receive", json=receipt), 422, "unknown_location")

    assert refused["details"] == [{"field": "location_id", "message": "unknown location"}]
    assert api.get(f"/returns/{rma['id']}").json()["status"] == "authorized"


def test_a_line_repeated_in_a_request_or_a_receipt_is_422_naming_the_repeating_entry(api: InProcessApi):
    order, _, warehouse = an_order(api, 3)
    twice = {"lines": [*return_body(1)["lines"], *return_body(1)["lines"]]}

    refused = assert_error(api.post(f"/orders/{order['id']}/returns", json=twice), 422, "validation_error")

    assert [d["field"] for d in refused["details"]] == ["lines[1].line_id"]
    rma = api.post(f"/orders/{order['id']}/returns", json=return_body(2)).json()
    receipt = {"location_id": warehouse, "lines": [{"line_id": "L1", "quantity": 1, "condition": "damaged"}] * 2}
    refused = assert_error(api.post(f"/returns/{rma['id']}/receive", json=receipt), 422, "validation_error")
    assert [d["field"] for d in refused["details"]] == ["lines[1].condition"]
    assert "lines[0]" in refused["details"][0]["message"]


def test_returns_are_listed_by_order_and_status_and_hidden_from_other_channels(api: InProcessApi):
    order, _, _ = an_order(api, 2)
    rma = api.post(f"/orders/{order['id']}/returns", json=return_body(1)).json()

    assert [r["id"] for r in api.get(f"/orders/{order['id']}/returns").json()["items"]] == [rma["id"]]
    listed = api.get("/returns", params={"status": "authorized", "limit": 100}).json()["items"]
    assert rma["id"] in [r["id"] for r in listed]
    assert all(r["status"] == "authorized" for r in listed)

    other = api.post("/api-keys", json={"name": "other", "scopes": ["orders:read", "returns:write"],
                                        "channel": "elsewhere"}).json()["key"]  # fmt: skip
    assert_error(api.get(f"/returns/{rma['id']}", key=other), 404)
    assert_error(api.get(f"/orders/{order['id']}/returns", key=other), 404)
    assert_error(api.post(f"/returns/{rma['id']}/approve", key=other, json={}), 404)
    assert api.get("/returns", key=other).json() == {"items": [], "next_cursor": None}
    own = api.post("/api-keys", json={"name": "own", "scopes": ["orders:read"], "channel": order["channel"]}).json()
    assert [r["id"] for r in api.get("/returns", key=own["key"]).json()["items"]] == [rma["id"]]


@pytest.mark.parametrize("bound", [True, False], ids=["storefront key", "returns desk key"])
def test_a_returns_key_cannot_receive_a_return_and_refund_it_a_locations_key_can(api: InProcessApi, bound: bool):
    # Before: a storefront's key (returns:write, for its customers to start returns) received a return
    # no parcel reached, and the returns workflow refunded it: receiving is a location's work.
    order, sku, warehouse = an_order(api, 2)
    channel = order["channel"] if bound else None
    storefront = issue(api, "returns:write", channel=channel)
    created = api.post(f"/orders/{order['id']}/returns", key=storefront, json=return_body(1))
    assert created.status_code == 201, created.text
    rma = created.json()
    before = on_hand(api, sku, warehouse)
    receipt = {"location_id": warehouse, "lines": [{"line_id": "L1", "quantity": 1, "condition": "resellable"}]}

    refused = assert_error(api.post(f"/returns/{rma['id']}/receive", key=storefront, json=receipt), 403, "forbidden")

    assert "fulfillment:write" in refused["message"]
    unchanged = api.get(f"/returns/{rma['id']}").json()
    assert (unchanged["status"], unchanged["version"], unchanged["received_by"]) == ("authorized", rma["version"], None)
    assert (unchanged["refund"], unchanged["lines"][0]["received_quantity"]) == (rma["refund"], 0)
    assert api.get(f"/orders/{order['id']}/refunds").json()["items"] == []
    assert on_hand(api, sku, warehouse) == before

    warehouse_key = issue(api, "fulfillment:write", channel=channel)
    received = api.post(f"/returns/{rma['id']}/receive", key=warehouse_key, json=receipt)

    assert received.status_code == 200, received.text
    assert received.json()["status"] == "refunded"
    refunds = api.get(f"/orders/{order['id']}/refunds").json()["items"]
    assert [(r["amount"], r["status"]) for r in refunds] == [(received.json()["refund"], "succeeded")]
    assert on_hand(api, sku, warehouse) == before + 1


def test_a_malformed_or_unknown_return_id_is_404(api: InProcessApi):
    assert_error(api.get("/returns/rma_" + "a" * 24), 404)
    assert_error(api.get("/returns/not-an-id"), 404)


def test_a_refused_refund_answers_202_and_receiving_again_tries_again(api: InProcessApi):
    order, _, warehouse = an_order(api, 1, token="tok_refund_decline")
    rma = api.post(f"/orders/{order['id']}/returns", json=return_body(1)).json()
    receipt = {"location_id": warehouse, "lines": [{"line_id": "L1", "quantity": 1, "condition": "resellable"}]}

    first = api.post(f"/returns/{rma['id']}/receive", json=receipt)
    again = api.post(f"/returns/{rma['id']}/receive", json=receipt)

    assert (first.status_code, first.json()["status"]) == (202, "received")
    assert (again.status_code, again.json()["status"]) == (202, "received")
    refunds = api.get(f"/orders/{order['id']}/refunds").json()["items"]
    assert [r["status"] for r in refunds] == ["failed", "failed"]
    assert api.get(f"/orders/{order['id']}").json()["payment"]["refunded"]["amount"] == "0.00"


def test_a_request_retried_with_its_idempotency_key_makes_one_return(api: InProcessApi):
    order, _, _ = an_order(api, 2)
    headers = {"Idempotency-Key": "return-once"}

    first = api.post(f"/orders/{order['id']}/returns", json=return_body(1), headers=headers)
    again = api.post(f"/orders/{order['id']}/returns", json=return_body(1), headers=headers)
    other = api.post(f"/orders/{order['id']}/returns", json=return_body(2), headers=headers)

    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json()["id"] == first.json()["id"]
    assert_error(other, 409, "idempotency_key_reused")
    assert len(api.get(f"/orders/{order['id']}/returns").json()["items"]) == 1


def test_a_request_retried_with_its_key_after_it_failed_past_the_return_makes_one_return(
    api: InProcessApi, monkeypatch: pytest.MonkeyPatch
):
    from core.errors import TransientError
    from functions.adapters.dynamodb import DynamoOrders

    order, _, _ = an_order(api, 3)
    headers = {"Idempotency-Key": "return-after-a-failure"}
    real = DynamoOrders.update

    def busy_once(self: DynamoOrders, *args: Any, **kwargs: Any) -> None:
        monkeypatch.setattr(DynamoOrders, "update", real)
        raise TransientError("the Orders table is busy")

    monkeypatch.setattr(DynamoOrders, "update", busy_once)
    first = api.post(f"/orders/{order['id']}/returns", json=return_body(1), headers=headers)
    assert first.status_code == 503, first.text

    again = api.post(f"/orders/{order['id']}/returns", json=return_body(1), headers=headers)

    assert again.status_code == 201, again.text
    assert [r["id"] for r in api.get(f"/orders/{order['id']}/returns").json()["items"]] == [again.json()["id"]]
    history = api.get(f"/orders/{order['id']}/history").json()["items"]
    assert [e["detail"]["return_id"] for e in history if e["type"] == "return_requested"] == [again.json()["id"]]


def test_an_orders_returns_are_paged_by_limit_and_cursor_oldest_first(api: InProcessApi):
    order, _, _ = an_order(api, 3)
    made = [api.post(f"/orders/{order['id']}/returns", json=return_body(1)).json()["id"] for _ in range(3)]

    first = api.get(f"/orders/{order['id']}/returns", params={"limit": 2}).json()
    second = api.get(f"/orders/{order['id']}/returns", params={"limit": 2, "cursor": first["next_cursor"]}).json()

    assert [r["id"] for r in first["items"]] == made[:2] and first["next_cursor"]
    assert ([r["id"] for r in second["items"]], second["next_cursor"]) == (made[2:], None)
    assert api.get(f"/orders/{order['id']}/returns").json()["next_cursor"] is None
    assert_error(api.get(f"/orders/{order['id']}/returns", params={"limit": 0}), 422, None, "limit")
    assert_error(api.get(f"/orders/{order['id']}/returns", params={"limit": 101}), 422, None, "limit")
    other, _, _ = an_order(api, 1, ship=False)  # another order's list: shipped or not, it refuses the cursor
    foreign = api.get(f"/orders/{other['id']}/returns", params={"cursor": first["next_cursor"]})
    assert_error(foreign, 422, "invalid_cursor", "cursor")
    forged = api.get(f"/orders/{order['id']}/returns", params={"cursor": "bm90LWEtY3Vyc29y"})
    assert_error(forged, 422, "invalid_cursor")


@pytest.mark.parametrize("written", ["4111111111111111", "rtn-4111-1111-1111-1111"])
def test_a_card_number_sent_as_an_idempotency_key_is_refused_and_kept_on_no_return(api: InProcessApi, written: str):
    # A return keeps the key it was made under (its request_key), so a card number there would be stored.
    order, _, _ = an_order(api, 2)
    refund = {"amount": {"amount": "1.00", "currency": "USD"}, "reason": "late delivery"}

    for path, body in ((f"/orders/{order['id']}/returns", return_body(1)), (f"/orders/{order['id']}/refunds", refund)):
        response = api.post(path, json=body, headers={"Idempotency-Key": written})

        assert_error(response, 422, "card_data_rejected", "Idempotency-Key")
        assert "1111" not in response.text
    assert api.get(f"/orders/{order['id']}/returns").json()["items"] == []
    assert api.get(f"/orders/{order['id']}/refunds").json()["items"] == []
    stored = boto3.client("dynamodb", region_name="us-east-1").scan(TableName="test-ReturnsTable")["Items"]
    assert not [item for item in stored if written in str(item)]


def test_a_receipt_answers_the_return_received_while_plain_reads_still_show_it_authorized(
    api: InProcessApi, monkeypatch: pytest.MonkeyPatch
):
    # The receipt is written, the returns workflow started (on AWS it runs after the answer), and
    # the return read again for the answer. Before, that was a plain read, which just after the
    # write may still show the return as it was: the warehouse was answered 202 with the return
    # `authorized` and nothing received, as if its receipt had not been recorded.
    from functions.adapters.dynamodb import DynamoReturns
    from functions.api.dependencies import container
    from functions.bootstrap import Config, bootstrap
    from tests.integration.return_steps import Started

    order, _, warehouse = an_order(api, 1)
    rma = api.post(f"/orders/{order['id']}/returns", json=return_body(1)).json()
    real_get, real_update = DynamoReturns.get, DynamoReturns.update
    before: dict[str, Any] = {}

    def update(self: DynamoReturns, item: Any, expected: Any) -> None:
        real_update(self, item, expected)
        before[item.id] = expected

    def get(self: DynamoReturns, return_id: str, *, consistent: bool = False) -> Any:
        if consistent or return_id not in before:
            return real_get(self, return_id, consistent=consistent)
        return before[return_id]  # a plain read just after the write: the return as it was

    monkeypatch.setattr(DynamoReturns, "update", update)
    monkeypatch.setattr(DynamoReturns, "get", get)
    receipt = {"location_id": warehouse, "lines": [{"line_id": "L1", "quantity": 1, "condition": "resellable"}]}
    started = Started()
    with container.override(bootstrap(Config.from_env(), return_workflow=started)):
        received = api.post(f"/returns/{rma['id']}/receive", json=receipt)

    assert received.status_code == 202, received.text
    assert (received.json()["status"], received.json()["lines"][0]["received_quantity"]) == ("received", 1)
    assert started.started == [rma["id"]]


# --- Where the units go back to (return_to) -------------------------------------------------------
# The walk's network (/tmp/h764/walk.md, 20): a Tokyo customer's units shipped from Tokyo, Osaka and Berlin.
JAPAN_AND_GERMANY = {
    "tokyo": ("JP", "135-0061", 35.63, 139.88),
    "osaka": ("JP", "530-0001", 34.69, 135.50),
    "berlin": ("DE", "10115", 52.52, 13.40),
}
TOKYO_WITH_COORDINATES = {**TOKYO, "latitude": 35.68, "longitude": 139.76}


def a_location_in(catalog: Catalog, city: str, **fields: Any) -> str:
    country, postal_code, latitude, longitude = JAPAN_AND_GERMANY[city]
    at = address_body(name=city, city=city, region=None, postal_code=postal_code, country=country)
    return catalog.location(**{**location_body(address=at, latitude=latitude, longitude=longitude), **fields})


def delivered_to_tokyo(api: InProcessApi, *lines: tuple[str, int], **fields: Any) -> dict[str, Any]:
    """An order in yen of (sku, quantity) lines to the Tokyo customer, shipped and delivered."""
    body = order_body(
        channel=f"web-{uuid.uuid4().hex[:8]}", external_id=unique("ext"), currency="JPY",
        lines=[{"sku": sku, "quantity": quantity} for sku, quantity in lines],
        **{"shipping_address": TOKYO_WITH_COORDINATES, **fields},
    )  # fmt: skip
    placed = api.post("/orders", json=body)
    assert placed.status_code == 201, placed.text
    run_workflow(placed.json()["id"])
    return delivered(api, api.get(f"/orders/{placed.json()['id']}").json())


def returned(api: InProcessApi, order: dict[str, Any], *lines: tuple[str, int]) -> dict[str, Any]:
    body = {"lines": [{"line_id": line_id, "quantity": units, "reason": "not needed"} for line_id, units in lines]}
    created = api.post(f"/orders/{order['id']}/returns", json=body)
    assert created.status_code == 201, created.text
    return created.json()


def test_a_tokyo_customers_units_shipped_from_three_countries_go_back_to_tokyo_not_berlin(api: InProcessApi):
    catalog = Catalog(api)
    sku = catalog.product("1000", "JPY", weight_grams=300)
    where = {city: a_location_in(catalog, city) for city in JAPAN_AND_GERMANY}
    for location_id in where.values():
        catalog.stock(sku, location_id, 1)
    order = delivered_to_tokyo(api, (sku, 3))
    assert sorted(s["location_id"] for s in order["shipments"]) == sorted(where.values())

    rma = returned(api, order, ("L1", 1))

    assert rma["return_to"] == where["tokyo"] and rma["label_url"].startswith("http")
    # Each unit goes back to Tokyo, the one Berlin shipped too: one return label crosses no ocean.
    assert returned(api, order, ("L1", 2))["return_to"] == where["tokyo"]


def test_without_the_customers_coordinates_units_go_back_to_their_country_not_where_most_of_them_came_from(
    api: InProcessApi,
):
    # The walk's address, as the storefront sent it: no coordinates, so no distance the core can measure.
    catalog = Catalog(api)
    sku = catalog.product("1000", "JPY", weight_grams=300)
    tokyo, berlin = a_location_in(catalog, "tokyo"), a_location_in(catalog, "berlin")
    catalog.stock(sku, tokyo, 1)
    catalog.stock(sku, berlin, 2)
    order = delivered_to_tokyo(api, (sku, 3), shipping_address=TOKYO)
    assert sorted((s["location_id"], s["lines"][0]["quantity"]) for s in order["shipments"]) == sorted(
        [(tokyo, 1), (berlin, 2)]
    )

    assert returned(api, order, ("L1", 1))["return_to"] == tokyo


def test_a_return_of_two_lines_goes_to_the_nearer_of_the_two_locations_that_shipped_them(api: InProcessApi):
    catalog = Catalog(api)
    tea, cup = (catalog.product("1000", "JPY", weight_grams=300) for _ in range(2))
    berlin, osaka = a_location_in(catalog, "berlin"), a_location_in(catalog, "osaka")
    catalog.stock(tea, berlin, 1)
    catalog.stock(cup, osaka, 1)
    order = delivered_to_tokyo(api, (tea, 1), (cup, 1))

    # The line shipped from Berlin first: the label goes to Osaka all the same.
    assert returned(api, order, ("L1", 1), ("L2", 1))["return_to"] == osaka


def test_at_the_same_distance_units_go_back_where_more_of_them_shipped_from(api: InProcessApi):
    catalog = Catalog(api)
    sku = catalog.product("1000", "JPY", weight_grams=300)
    # Two warehouses on one site, the one that ships fewer of the units first by id.
    fewer, more = (a_location_in(catalog, "tokyo", name=name) for name in ("Tokyo A", "Tokyo B"))
    if fewer > more:
        fewer, more = more, fewer
    catalog.stock(sku, fewer, 1)
    catalog.stock(sku, more, 2)
    order = delivered_to_tokyo(api, (sku, 3))
    assert sorted(s["location_id"] for s in order["shipments"]) == [fewer, more]

    assert returned(api, order, ("L1", 1))["return_to"] == more


def test_a_pickup_orders_units_go_back_to_the_store_it_was_collected_at(api: InProcessApi):
    catalog = Catalog(api)
    sku = catalog.product("1000", "JPY", weight_grams=300)
    store = a_location_in(catalog, "osaka", type="store", ships=False, pickup=True)
    catalog.stock(sku, store, 1)
    order = delivered_to_tokyo(api, (sku, 1), fulfillment={"type": "pickup", "location_id": store})

    rma = returned(api, order, ("L1", 1))

    assert (order["status"], rma["return_to"]) == ("delivered", store)


def test_return_requests_read_the_network_as_capture_does_once_while_it_is_fresh(api: InProcessApi):
    # A return's destination (the nearest location that shipped its units) and its label's address
    # read the network: per request, uncached, where capture reads it once per
    # OMS_CATALOG_CACHE_SECONDS (make bench counted one more GetItem a return than before them).
    from functions.api.dependencies import container

    order, _sku, _warehouse = an_order(api)
    client = container().dynamodb
    made: list[tuple[str, dict[str, Any]]] = []

    def sent(params: dict[str, Any], model: Any, **_: Any) -> None:
        made.append((model.name, params))

    client.meta.events.register("provide-client-params.dynamodb.*", sent)
    try:
        answers = [api.post(f"/orders/{order['id']}/returns", json=return_body(1)) for _ in range(2)]
    finally:
        client.meta.events.unregister("provide-client-params.dynamodb.*", sent)

    assert [answer.status_code for answer in answers] == [201, 201], [answer.text for answer in answers]
    assert all(answer.json()["label_url"] for answer in answers)
    network = [p for op, p in made if op == "GetItem" and p["Key"].get("pk", {}).get("S") == "NETWORK"]
    assert len(network) <= 1, made
