"""What a ship and a delivery read of their order, and a reservation of its stock (issue 10: cost
per order), over the in-process API: a ship and a delivery read the order once with a plain read
and decide every write after it on that read or on what they wrote themselves, each write
conditional on the status and version decided on (a change that lands in between makes the write
lose, and it is decided again on a consistent read); ReserveStock reads each stock item once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.client import BaseClient

from core.holds import HoldRequest
from tests.e2e.client import order_body, stocked_sku
from tests.integration.in_process import InProcessApi, allocated, in_process_api_with_labels


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started:
        yield started


@pytest.fixture(scope="module")
def sku(api: InProcessApi) -> str:
    return stocked_sku(api, "25.00", on_hand=1000)[1]


class OrdersRequests:
    """The requests the functions send to the Orders table while it is installed: (operation,
    parameters). `after_first_get` runs once, after the first GetItem, as another writer would
    between that read and what follows it (its own requests are not recorded)."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, after_first_get: Callable[[], None] | None = None,
        table: str = "OrdersTable",
    ):  # fmt: skip
        self.sent: list[tuple[str, dict[str, Any]]] = []
        real = BaseClient._make_api_call
        pending = [after_first_get] if after_first_get else []

        def recorded(client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
            answer = real(client, operation, params)
            named = params.get("TableName") or ",".join(params.get("RequestItems", {}))
            if named.endswith(table):
                self.sent.append((operation, params))
                if operation == "GetItem" and pending:
                    monkeypatch.setattr(BaseClient, "_make_api_call", real)
                    pending.pop()()
                    monkeypatch.setattr(BaseClient, "_make_api_call", recorded)
            return answer

        monkeypatch.setattr(BaseClient, "_make_api_call", recorded)

    def reads(self) -> list[bool]:
        """Each GetItem of an order: whether it was consistent."""
        return [bool(p.get("ConsistentRead")) for op, p in self.sent if op == "GetItem"]

    def writes(self) -> int:
        return sum(1 for op, _ in self.sent if op == "UpdateItem")


def test_a_ship_reads_its_order_once_and_a_delivery_once(api, sku, monkeypatch):
    order_id, shipment_id = allocated(api, sku)
    base = f"/orders/{order_id}/shipments/{shipment_id}"

    ship = OrdersRequests(monkeypatch)
    response = api.post(f"{base}/ship", json={"tracking_number": "1Z999AA10123456784"})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "shipped"
    # One plain read; the capture request written ahead of the gateway, then the ship's record.
    assert (ship.reads(), ship.writes()) == ([False], 2)

    deliver = OrdersRequests(monkeypatch)
    response = api.post(f"{base}/deliver")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "delivered"
    assert (deliver.reads(), deliver.writes()) == ([False], 1)


def test_a_batch_ships_and_delivers_each_item_on_one_read_of_its_order(api, sku, monkeypatch):
    orders = [allocated(api, sku) for _ in range(2)]
    items = [{"order_id": o, "shipment_id": s, "action": "ship"} for o, s in orders]

    ship = OrdersRequests(monkeypatch)
    response = api.post("/shipments/confirmations", json={"items": items})
    assert response.status_code == 200, response.text
    assert [item["status"] for item in response.json()["items"]] == ["shipped", "shipped"]
    assert (ship.reads(), ship.writes()) == ([False, False], 4)

    deliver = OrdersRequests(monkeypatch)
    response = api.post("/shipments/confirmations", json={"items": [{**i, "action": "deliver"} for i in items]})
    assert [item["status"] for item in response.json()["items"]] == ["delivered", "delivered"]
    assert (deliver.reads(), deliver.writes()) == ([False, False], 2)


def test_a_hold_landing_after_a_ships_read_refuses_the_ship_and_nothing_is_captured(api, sku, monkeypatch):
    """The ship decides its capture request on the order it read; the hold made after that read
    makes the request's write lose, and the ship, decided again on a consistent read, is refused."""
    from functions.bootstrap import Config, bootstrap

    order_id, shipment_id = allocated(api, sku)
    holds = bootstrap(Config.from_env()).holds

    requests = OrdersRequests(
        monkeypatch, after_first_get=lambda: holds.hold(order_id, HoldRequest(reason="fraud_review"), actor="key_x")
    )
    response = api.post(f"/orders/{order_id}/shipments/{shipment_id}/ship", json={})
    assert response.status_code == 409, response.text
    assert True in requests.reads()  # decided again on a consistent read once its write lost

    order = api.get(f"/orders/{order_id}").json()
    assert order["status"] == "on_hold"
    assert order["shipments"][0]["status"] == "pending"
    assert order["payment"]["captured"]["amount"] == "0.00"
    history = api.get(f"/orders/{order_id}/history").json()["items"]
    assert not [entry for entry in history if entry["type"].startswith("payment_capture")]


def test_a_delivery_decided_on_a_read_a_change_made_stale_is_decided_again(api, sku, monkeypatch):
    """Another write of the order between the delivery's read and its own (its version moved on)
    makes the delivery's write lose; decided again on a consistent read, it is recorded."""
    order_id, shipment_id = allocated(api, sku)
    base = f"/orders/{order_id}/shipments/{shipment_id}"
    assert api.post(f"{base}/ship", json={}).status_code == 200

    def a_concurrent_change() -> None:
        from functions.bootstrap import Config, bootstrap

        container = bootstrap(Config.from_env())
        order = container.order_repository.get(order_id, consistent=True)
        assert order is not None
        changed = order.model_copy(update={"version": order.version + 1})
        container.order_repository.update(changed, order, [])

    requests = OrdersRequests(monkeypatch, after_first_get=a_concurrent_change)
    response = api.post(f"{base}/deliver")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "delivered"
    assert True in requests.reads()
    order = api.get(f"/orders/{order_id}").json()
    assert (order["status"], order["shipments"][0]["status"]) == ("delivered", "delivered")


def test_reserve_stock_reads_each_stock_item_once_consistently(api, sku, monkeypatch):
    """Its levels (to plan on) and the order's own reservations (what a run that died left, counted
    as the order's) come from one strongly consistent read of each stock item."""
    from functions.bootstrap import Config, bootstrap

    response = api.post("/orders", json=order_body((sku, 2)))
    assert response.status_code == 201, response.text
    order_id = response.json()["id"]
    steps = bootstrap(Config.from_env()).workflow
    steps.authorize_payment(order_id, attempt=0)

    stock = OrdersRequests(monkeypatch, table="InventoryTable")
    steps.reserve_stock(order_id)
    by_key = [(op, p) for op, p in stock.sent if op in ("GetItem", "BatchGetItem")]
    assert [op for op, _ in by_key] == ["BatchGetItem"]
    ((_, (read,)),) = [(op, list(p["RequestItems"].values())) for op, p in by_key]
    assert read["ConsistentRead"] is True
    assert len(read["Keys"]) == len({(k["sku"]["S"], k["location_id"]["S"]) for k in read["Keys"]})

    steps.create_shipments(order_id)
    order = api.get(f"/orders/{order_id}").json()
    assert order["status"] == "allocated"
    assert sum(a["quantity"] for a in order["allocations"]) == 2
