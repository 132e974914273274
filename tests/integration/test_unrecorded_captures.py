"""A capture a ship asked the gateway for and never recorded, under moto: a typical ship writes no
index entry for it (nothing finds it through an index), and the scheduled jeopardy handler, which
reads the order anyway once it is past its status's deadline, refunds that capture and holds the
order for a person to confirm whether the parcel left."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from botocore.client import BaseClient

from core.models import HistoryEntry, LocationInput, Order, ProductInput, utc_now
from core.status import OrderStatus, ShipmentStatus
from tests.builders import location_body, place_order, product_body
from tests.fakes import FakeLabels
from tests.integration.import_support import context
from tests.integration.test_reconciler import refund_index


@pytest.fixture
def scan(aws, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The jeopardy handler, its metrics on stdout (starting empty), at `now` (a datetime) or now."""
    from functions.bootstrap import Config, bootstrap
    from functions.jeopardy import app

    monkeypatch.setenv("RECONCILE_AFTER_MINUTES", "15")
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    app.metrics.clear_metrics()
    app.container.forget()

    def run(now=None) -> dict[str, Any]:
        if now is None:
            return app.lambda_handler({"detail-type": "Scheduled Event"}, context("JeopardyScanFunction"))
        with app.container.override(bootstrap(Config.from_env(), clock=lambda: now)):
            return app.lambda_handler({"detail-type": "Scheduled Event"}, context("JeopardyScanFunction"))

    yield run
    app.container.forget()
    app.metrics.clear_metrics()


def emitted(output: str) -> dict[str, float]:
    """The metrics in the EMF lines the handler printed: name -> sum. (Its `service` dimension is
    set where the module is first imported, which another test may do without the variable.)"""
    totals: dict[str, float] = {}
    for line in output.splitlines():
        if '"_aws"' in line:
            record = json.loads(line)
            for directive in record["_aws"]["CloudWatchMetrics"]:
                for metric in directive["Metrics"]:
                    totals[metric["Name"]] = totals.get(metric["Name"], 0) + sum(record[metric["Name"]])
    return totals


def an_allocated_order(aws, external_id: str = "web-shipped") -> tuple[Any, Order]:
    """The services of this moto account and an allocated order with one shipment."""
    from functions.bootstrap import Config, bootstrap

    services = bootstrap(Config.from_env(), label_store=FakeLabels())
    services.catalog.put_product("TSHIRT", ProductInput.model_validate(product_body()))
    services.catalog.put_location("wh-east", LocationInput.model_validate(location_body()))
    services.inventory.count("TSHIRT", "wh-east", 10)
    placed = services.capture.place(place_order(external_id=external_id), actor="key_web")
    services.workflow.authorize_payment(placed.id, attempt=0)
    services.workflow.reserve_stock(placed.id)
    services.workflow.create_shipments(placed.id)
    return services, services.order_repository.get(placed.id)


def a_ship_that_died(aws, monkeypatch: pytest.MonkeyPatch, external_id: str = "web-died") -> Order:
    """An allocated order whose ship died after the gateway captured its share, before its write
    (the API function timed out): the order as it was."""
    from functions.adapters.dynamodb import DynamoOrders

    services, order = an_allocated_order(aws, external_id)
    real = DynamoOrders.update

    def dies(self: DynamoOrders, new: Order, expected: Order, entries: list[HistoryEntry]) -> None:
        if entries and entries[0].type == "shipment_shipped":
            raise TimeoutError("the API function timed out before recording the ship")
        real(self, new, expected, entries)

    with monkeypatch.context() as patched:
        patched.setattr(DynamoOrders, "update", dies)
        with pytest.raises(TimeoutError):
            services.actions.ship(order.id, order.shipments[0].id, "1Z999", "key_wh")
    assert services.order_repository.get(order.id).captures_requested  # captured, never recorded
    return order


def _sets_refund_key(params: Any) -> bool:
    """Whether a write's parameters give the item a by_pending_refund key (SET or PutItem)."""
    if isinstance(params, dict):
        if ":refund_key" in params.get("ExpressionAttributeValues", {}) or "refund_key" in params.get("Item", {}):
            return True
        return any(_sets_refund_key(value) for value in params.values())
    if isinstance(params, list):
        return any(_sets_refund_key(value) for value in params)
    return False


def test_a_ship_writes_no_index_entry_for_its_capture_request_whether_it_finishes_or_dies(aws, monkeypatch):
    writes: list[tuple[str, dict[str, Any]]] = []
    real = BaseClient._make_api_call

    def recorded(self: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        if operation in ("PutItem", "UpdateItem", "TransactWriteItems", "BatchWriteItem"):
            writes.append((operation, params))
        return real(self, operation, params)

    services, order = an_allocated_order(aws)
    monkeypatch.setattr(BaseClient, "_make_api_call", recorded)

    shipped = services.actions.ship(order.id, order.shipments[0].id, "1Z999", "key_wh")

    assert shipped.status is OrderStatus.SHIPPED
    orders_writes = [p for _, p in writes if aws.tables["OrdersTable"] in str(p)]
    assert len(orders_writes) >= 2  # the request written ahead of the gateway, then the ship's record
    assert not any(_sets_refund_key(p) for p in orders_writes)
    assert refund_index(aws, order.id) == {}

    writes.clear()
    died = a_ship_that_died(aws, monkeypatch)  # a second order, on the same account
    assert not any(_sets_refund_key(p) for _, p in writes) and refund_index(aws, died.id) == {}


def test_a_capture_whose_ship_died_is_refunded_once_its_order_is_past_its_deadline_and_the_order_held(
    aws, scan, monkeypatch, capsys, caplog
):
    from functions.bootstrap import Config, bootstrap

    order = a_ship_that_died(aws, monkeypatch)
    (shipment,) = order.shipments
    soon = utc_now() + timedelta(hours=1)
    assert scan(soon)["captures_settled"] == []  # not late: its ship may still be repeated
    assert bootstrap(Config.from_env()).order_repository.get(order.id).captures_requested
    capsys.readouterr()

    late = utc_now() + timedelta(hours=48, minutes=5)  # past allocated=48h
    answer = scan(late)

    assert (answer["marked"], answer["captures_settled"], answer["ships_held"], answer["ships_unconfirmed"]) == (
        [order.id], [order.id], [order.id], [],
    )  # fmt: skip
    settled, history = bootstrap(Config.from_env()).order_repository.history(order.id)
    assert settled.captures_requested == [] and settled.payment == order.payment  # nothing kept, nothing owed
    assert (settled.status, settled.hold.reason, settled.shipments[0].status) == (
        OrderStatus.ON_HOLD, "other", ShipmentStatus.PENDING,
    )  # fmt: skip
    held, withdrawn, reversed_ = history[-3:]
    assert (held.type, held.actor, held.detail["shipment_ids"]) == ("on_hold", "jeopardy_scan", [shipment.id])
    assert (withdrawn.type, reversed_.type, reversed_.actor) == (
        "capture_withdrawn", "payment_capture_reversed", "jeopardy_scan",
    )  # fmt: skip
    assert reversed_.detail["amount"] == order.totals.grand_total.model_dump(mode="json")
    assert reversed_.detail["capture_reference"] and reversed_.detail["refund_reference"]
    assert refund_index(aws, order.id) == {}
    metrics = emitted(capsys.readouterr().out)
    assert (metrics["UnrecordedCapturesSettled"], metrics["ShipsToConfirm"]) == (1, 1)
    logged = {r.getMessage(): (r.levelname, r.order_id) for r in caplog.records if getattr(r, "order_id", None)}
    assert logged["capture left by a ship or a settlement settled"] == ("WARNING", order.id)
    assert logged["order held: a ship died after asking for its capture; confirm whether the parcel left"] == (
        "WARNING", order.id,
    )  # fmt: skip
    assert scan(late + timedelta(minutes=5))["captures_settled"] == []  # settled once


def test_a_pass_that_could_not_settle_a_capture_reports_what_it_did_then_fails(aws, scan, monkeypatch, capsys, caplog):
    from core.capture_sweep import CapturesNotSettled, CapturesSettled, UnrecordedCaptureSweep
    from core.errors import PaymentRefused

    order = a_ship_that_died(aws, monkeypatch)

    def incomplete(self: UnrecordedCaptureSweep, order_ids: list[str], actor: str) -> CapturesSettled:
        assert list(order_ids) == [order.id]
        done = CapturesSettled(settled=["ord_y"], held=[], unconfirmed=["ord_x"])
        raise CapturesNotSettled(done, {order.id: PaymentRefused("refund", "closed account")})

    monkeypatch.setattr(UnrecordedCaptureSweep, "run", incomplete)
    capsys.readouterr()

    with pytest.raises(CapturesNotSettled):
        scan(utc_now() + timedelta(hours=48, minutes=5))

    metrics = emitted(capsys.readouterr().out)
    assert (metrics["UnrecordedCapturesSettled"], metrics["ShipsToConfirm"], metrics["OrdersMarkedInJeopardy"]) == (
        1, 1, 1,
    )  # fmt: skip
    errors = {r.order_id: r for r in caplog.records if r.levelname == "ERROR" and getattr(r, "order_id", None)}
    assert errors[order.id].getMessage() == "capture left by a ship or a settlement not settled"
    assert isinstance(errors[order.id].exc_info[1], PaymentRefused)
    assert "confirm whether the parcel left" in errors["ord_x"].getMessage()
