"""A capture a ship asked the gateway for and never recorded, under moto: a typical ship writes no
index entry for it (nothing finds it through an index), and the scheduled jeopardy handler, which
reads the order anyway once it is past its status's deadline, refunds that capture and holds the
order for a person to confirm whether the parcel left. A settlement capture a cancel of units asked
for and never recorded, on an order shipped since (never late), is found by the scheduled reconciler
through its own partition of the by_pending_refund index, which the typical order never writes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from botocore.client import BaseClient

from core.models import HistoryEntry, LocationInput, Order, ProductInput, utc_now
from core.status import OrderStatus, ShipmentStatus
from tests.builders import location_body, place_order, product_body
from tests.fakes import FakeLabels
from tests.integration.conftest import queries_sent
from tests.integration.import_support import context
from tests.integration.test_reconciler import only_granted_calls, refund_index, stack  # noqa: F401 (fixtures)


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
            return app.lambda_handler({"detail-type": "Scheduled Event"}, context("JeopardyScanFunction", 60))
        with app.container.override(bootstrap(Config.from_env(), clock=lambda: now)):
            return app.lambda_handler({"detail-type": "Scheduled Event"}, context("JeopardyScanFunction", 60))

    yield run
    app.container.forget()
    app.metrics.clear_metrics()


def emitted(output: str) -> dict[str, float]:
    """The handler's own metrics in the EMF lines it printed (by the `service` dimension its alarms
    name; the business metrics have theirs): name -> sum."""
    totals: dict[str, float] = {}
    for line in output.splitlines():
        if '"_aws"' in line:
            record = json.loads(line)
            for directive in record["_aws"]["CloudWatchMetrics"]:
                if directive["Dimensions"] != [["service"]]:
                    continue
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


@contextmanager
def _write_dies(
    monkeypatch: pytest.MonkeyPatch, entry: str = "shipment_shipped", what: str = "the ship"
) -> Iterator[None]:
    """The API function timing out after the gateway answered and before the write recording it
    (the write whose first history entry is `entry`): the call in the block raises TimeoutError."""
    from functions.adapters.dynamodb import DynamoOrders

    real = DynamoOrders.update

    def dies(self: DynamoOrders, new: Order, expected: Order, entries: list[HistoryEntry], **kw: object) -> None:
        if entries and entries[0].type == entry:
            raise TimeoutError(f"the API function timed out before recording {what}")
        real(self, new, expected, entries, **kw)

    with monkeypatch.context() as patched:
        patched.setattr(DynamoOrders, "update", dies)
        with pytest.raises(TimeoutError):
            yield


def a_ship_that_died(aws, monkeypatch: pytest.MonkeyPatch, external_id: str = "web-died") -> Order:
    """An allocated order whose ship died after the gateway captured its share, before its write
    (the API function timed out): the order as it was."""
    services, order = an_allocated_order(aws, external_id)
    with _write_dies(monkeypatch):
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

    # Handed on unmarked (a pass that died before settling it leaves it to the next), then held.
    assert (answer["marked"], answer["captures_settled"], answer["ships_held"], answer["ships_unconfirmed"]) == (
        [], [order.id], [order.id], [],
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
    assert metrics["ShipsWaitingToConfirm"] == 1  # counted in the run that held it
    logged = {r.getMessage(): (r.levelname, r.order_id) for r in caplog.records if getattr(r, "order_id", None)}
    assert logged["capture left by a ship or a settlement settled"] == ("WARNING", order.id)
    assert logged["order held: a ship died after asking for its capture; confirm whether the parcel left"] == (
        "WARNING", order.id,
    )  # fmt: skip
    assert scan(late + timedelta(minutes=5))["captures_settled"] == []  # settled once
    # The gauge ShipsToConfirmAlarm watches stays up every run while the parcel waits for a person
    # (a count of the runs that held one cleared by itself 5 minutes on), until the order leaves
    # that hold: cancelled here.
    capsys.readouterr()
    assert scan(late + timedelta(days=3))["ships_to_confirm"] == 1
    assert emitted(capsys.readouterr().out)["ShipsWaitingToConfirm"] == 1
    bootstrap(Config.from_env()).actions.cancel(order.id, "the parcel never left", "key_ops")
    assert scan(late + timedelta(days=3, minutes=5))["ships_to_confirm"] == 0
    assert emitted(capsys.readouterr().out)["ShipsWaitingToConfirm"] == 0


def test_a_pass_that_could_not_settle_a_capture_reports_what_it_did_then_fails(aws, scan, monkeypatch, capsys, caplog):
    from core.capture_sweep import CapturesNotSettled, CapturesSettled, UnrecordedCaptureSweep
    from core.errors import PaymentRefused

    order = a_ship_that_died(aws, monkeypatch)

    def incomplete(self: UnrecordedCaptureSweep, order_ids: list[str], actor: str, **_: Any) -> CapturesSettled:
        assert list(order_ids) == [order.id]
        done = CapturesSettled(settled=["ord_y"], held=[], unconfirmed=["ord_x"])
        raise CapturesNotSettled(done, {order.id: PaymentRefused("refund", "closed account")})

    monkeypatch.setattr(UnrecordedCaptureSweep, "run", incomplete)
    capsys.readouterr()

    with pytest.raises(CapturesNotSettled):
        scan(utc_now() + timedelta(hours=48, minutes=5))

    metrics = emitted(capsys.readouterr().out)
    assert (metrics["UnrecordedCapturesSettled"], metrics["ShipsToConfirm"]) == (1, 1)
    assert "OrdersMarkedInJeopardy" not in metrics  # handed on unmarked: the next pass finds it again
    errors = {r.order_id: r for r in caplog.records if r.levelname == "ERROR" and getattr(r, "order_id", None)}
    assert errors[order.id].getMessage() == "capture left by a ship or a settlement not settled"
    assert isinstance(errors[order.id].exc_info[1], PaymentRefused)
    assert "confirm whether the parcel left" in errors["ord_x"].getMessage()


# --- A settlement capture whose cancel of units died, on an order shipped since ---------------------


def a_partly_shipped_order(aws, external_id: str, token: str = "tok_approve") -> tuple[Any, Order]:
    """The services of this moto account and an order of two parcels (MUG from the west, CAP from the
    east), the one that does not carry the shipping shipped: cancelling the other leaves a total
    (its share and the shipping) above what was captured, so that cancel captures the rest."""
    from functions.bootstrap import Config, bootstrap

    services = bootstrap(Config.from_env(), label_store=FakeLabels())
    for sku, price in (("MUG", "12.50"), ("CAP", "7.77")):
        services.catalog.put_product(sku, ProductInput.model_validate(product_body(price)))
    west = location_body(name="West warehouse", latitude=39.53, longitude=-119.81)
    services.catalog.put_location("wh-east", LocationInput.model_validate(location_body()))
    services.catalog.put_location("wh-west", LocationInput.model_validate(west))
    services.inventory.count("MUG", "wh-west", 10)
    services.inventory.count("CAP", "wh-east", 10)
    lines = [{"sku": "MUG", "quantity": 1}, {"sku": "CAP", "quantity": 2}]
    payment = {"method": "test", "token": token}
    placed = services.capture.place(place_order(external_id=external_id, lines=lines, payment=payment), actor="key_web")
    services.workflow.authorize_payment(placed.id, attempt=0)
    services.workflow.reserve_stock(placed.id)
    services.workflow.create_shipments(placed.id)
    order = services.order_repository.get(placed.id)
    shipped = services.actions.ship(order.id, order.shipments[1].id, None, actor="key_wh")
    assert shipped.status is OrderStatus.PARTIALLY_SHIPPED
    return services, shipped


def test_a_partly_shipped_orders_second_ship_that_died_is_settled_with_the_default_sla(aws, scan, monkeypatch):
    # API.md's default OMS_SLA gives partially_shipped the allocated deadline: the scan hands the
    # order on unmarked, and the sweep settles it.
    from functions.bootstrap import Config, bootstrap

    services, order = a_partly_shipped_order(aws, "web-second-died")
    second = order.shipments[0].id
    with _write_dies(monkeypatch):
        services.actions.ship(order.id, second, None, "key_wh")
    assert scan(utc_now() + timedelta(hours=1))["captures_settled"] == []

    answer = scan(utc_now() + timedelta(hours=48, minutes=5))  # past allocated=48h

    assert (answer["marked"], answer["captures_settled"], answer["ships_unconfirmed"]) == ([], [order.id], [order.id])
    settled = bootstrap(Config.from_env()).order_repository.get(order.id)
    assert (settled.status, settled.captures_requested, settled.jeopardy) == (OrderStatus.PARTIALLY_SHIPPED, [], None)
    assert settled.payment.captured == order.payment.captured


def test_a_partly_shipped_order_whose_refund_the_gateway_refused_is_listed_and_counted_late(aws, scan, monkeypatch):
    # Left unmarked, it was in no list a person reads (GET /orders?jeopardy=true, the alarm's count)
    # after the pass that met the refusal, and every pass read it again for nothing.
    from core.capture_sweep import CapturesNotSettled
    from core.ports import OrderFilter
    from functions.adapters.dynamodb import DynamoLateOrders, index_attributes

    services, order = a_partly_shipped_order(aws, "web-refund-refused", token="tok_refund_decline")
    with _write_dies(monkeypatch):
        services.actions.ship(order.id, order.shipments[0].id, None, "key_wh")
    with pytest.raises(CapturesNotSettled):
        scan(utc_now() + timedelta(hours=48, minutes=5))  # past allocated=48h: the refund refused

    answer = scan(utc_now() + timedelta(hours=48, minutes=25))

    assert (answer["marked"], answer["in_jeopardy"], answer["captures_settled"]) == ([order.id], 1, [])
    listed, _ = services.order_repository.list(OrderFilter(jeopardy=True), 10, None)
    assert [o.id for o in listed] == [order.id] and listed[0].captures_requested
    assert index_attributes(listed[0])["sla_key"] == {"S": "jeopardy"}
    late = DynamoLateOrders(services.dynamodb, services.config.orders_table)
    assert late.unmarked_since_before(OrderStatus.PARTIALLY_SHIPPED, utc_now() + timedelta(days=3), 10) == []
    assert scan(utc_now() + timedelta(hours=48, minutes=30))["marked"] == []


def test_a_partly_shipped_order_the_old_pass_noted_read_is_marked_late_on_its_deadline(aws, scan):
    # While partially_shipped had no deadline by default, the scan's partly shipped pass noted an
    # order it read with nothing standing (sla_key "read", no sla_at) and left it out of its query.
    # Stored so, the order is read by the pass of its status's deadline as any unmarked one.
    services, order = a_partly_shipped_order(aws, "web-read")
    table = services.config.orders_table
    noted = order.model_copy(update={"scan_read": True, "version": order.version + 1})
    services.order_repository.update(noted, order, [])

    def item() -> dict[str, Any]:
        return services.dynamodb.get_item(TableName=table, Key={"id": {"S": order.id}}, ConsistentRead=True)["Item"]

    assert (item()["sla_key"], "sla_at" in item()) == ({"S": "read"}, False)

    answer = scan(utc_now() + timedelta(hours=48, minutes=5))  # past allocated=48h

    assert (answer["marked"], answer["in_jeopardy"]) == ([order.id], 1)
    assert item()["sla_key"] == {"S": "jeopardy"} and "sla_at" in item()


def a_settlement_that_died(aws, monkeypatch: pytest.MonkeyPatch, external_id: str = "web-settled") -> Order:
    """A partly shipped order whose cancel of what was left died after the gateway captured the
    rest of its total, before its write (the API function timed out): the order as it then is,
    shipped, with that settlement's capture request standing."""
    services, order = a_partly_shipped_order(aws, external_id)
    with _write_dies(monkeypatch, "payment_captured", "the settlement"):
        services.actions.cancel(order.id, "customer asked", "key_web")
    died = services.order_repository.get(order.id, consistent=True)
    assert died.status is OrderStatus.SHIPPED
    [request] = died.captures_requested
    assert request.shipment_id is None and died.payment.captured + request.amount == died.totals.grand_total
    return died


@pytest.fixture
def reconciler(stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:  # noqa: F811
    """The reconciler handler (its workflows on the stack's state machines), its metrics on stdout
    (starting empty), at `now` (a datetime) or now."""
    from functions.bootstrap import Config, bootstrap
    from functions.reconciler import app

    monkeypatch.setenv("RECONCILE_AFTER_MINUTES", "15")
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    app.metrics.clear_metrics()
    app.container.forget()

    def run(now=None) -> dict[str, Any]:
        event = {"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}}
        if now is None:
            return app.lambda_handler(event, context("ReconcilerFunction"))
        with app.container.override(bootstrap(Config.from_env(), label_store=FakeLabels(), clock=lambda: now)):
            return app.lambda_handler(event, context("ReconcilerFunction"))

    yield run
    app.container.forget()
    app.metrics.clear_metrics()


def test_a_typical_order_writes_no_settlement_index_entry(aws, monkeypatch):
    # Placed, allocated and shipped: none of its writes gives it a by_pending_refund key. A cancel of
    # units that settles a total at once writes the entry only for its request's moment.
    values: list[Any] = []
    real = BaseClient._make_api_call

    def recorded(self: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        if operation in ("PutItem", "UpdateItem", "TransactWriteItems", "BatchWriteItem"):
            values.append(params)
        return real(self, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", recorded)
    services, order = an_allocated_order(aws, "web-typical")
    shipped = services.actions.ship(order.id, order.shipments[0].id, "1Z999", "key_wh")

    assert shipped.status is OrderStatus.SHIPPED
    orders_writes = [p for p in values if aws.tables["OrdersTable"] in str(p)]
    assert len(orders_writes) >= 5  # placed, authorized, reserved, allocated, the ship's request and record
    assert not any(_sets_refund_key(p) for p in orders_writes)
    assert refund_index(aws, order.id) == {}

    _, partly = a_partly_shipped_order(aws, "web-typical-settled")
    settled = services.actions.cancel(partly.id, "customer asked", "key_web")

    assert settled.status is OrderStatus.SHIPPED and settled.captures_requested == []
    assert settled.payment.captured == settled.totals.grand_total
    assert refund_index(aws, partly.id) == {}  # the request's entry went with its record


def test_a_settlement_capture_whose_cancel_died_on_an_order_shipped_since_is_recorded_by_the_reconciler(
    aws, reconciler, scan, monkeypatch, capsys, caplog
):
    from functions.bootstrap import Config, bootstrap

    died = a_settlement_that_died(aws, monkeypatch)
    [request] = died.captures_requested
    assert refund_index(aws, died.id)["refund_key"] == "settlement"
    assert reconciler()["captures_settled"] == []  # its cancel may still record it
    week = utc_now() + timedelta(days=7)
    assert scan(week)["captures_settled"] == []  # shipped: never late, so the scan never finds it
    capsys.readouterr()

    later = utc_now() + timedelta(minutes=16)
    answer = reconciler(later)

    assert (answer["captures_settled"], answer["ships_held"], answer["ships_unconfirmed"]) == ([died.id], [], [])
    settled, history = bootstrap(Config.from_env()).order_repository.history(died.id)
    assert settled.status is OrderStatus.SHIPPED and settled.captures_requested == []
    assert settled.payment.captured == settled.totals.grand_total == died.payment.captured + request.amount
    captured = [h for h in history if h.type == "payment_captured" and h.actor == "reconciler"]
    assert [h.detail["amount"] for h in captured] == [request.amount.model_dump(mode="json")]
    # Out of the settlement captures' partition once recorded; in the kept-back pass's, which
    # finishes what else the dead cancel owed (the rest of the authorization released) once the
    # order has not changed for ReconcileAfterMinutes, then out of the index.
    assert refund_index(aws, died.id)["refund_key"] == "kept_back"
    assert emitted(capsys.readouterr().out)["UnrecordedCapturesSettled"] == 1
    logged = {r.getMessage(): (r.levelname, r.order_id) for r in caplog.records if getattr(r, "order_id", None)}
    assert logged["capture left by a ship or a settlement settled"] == ("WARNING", died.id)
    assert reconciler(later + timedelta(minutes=5))["captures_settled"] == []  # recorded once
    assert reconciler(later + timedelta(minutes=32))["captures_settled"] == []
    assert refund_index(aws, died.id) == {}
    done = bootstrap(Config.from_env()).order_repository.get(died.id)
    assert done.payment.authorized == done.payment.captured == settled.payment.captured and not done.settlement_owed


def test_a_reconciler_pass_that_could_not_settle_a_capture_reports_what_it_did_then_fails(
    aws, reconciler, monkeypatch, capsys, caplog
):
    from core.capture_sweep import CapturesNotSettled, CapturesSettled, UnrecordedCaptureSweep
    from core.errors import PaymentRefused

    def incomplete(self: UnrecordedCaptureSweep, requested: Any, actor: str, **kwargs: Any) -> CapturesSettled:
        assert actor == "reconciler"
        done = CapturesSettled(settled=["ord_y"], held=[], unconfirmed=[])
        raise CapturesNotSettled(done, {"ord_z": PaymentRefused("capture", "closed account")})

    monkeypatch.setattr(UnrecordedCaptureSweep, "run_settlements", incomplete)
    capsys.readouterr()

    with pytest.raises(CapturesNotSettled):
        reconciler()

    assert emitted(capsys.readouterr().out)["UnrecordedCapturesSettled"] == 1
    errors = {r.order_id: r for r in caplog.records if r.levelname == "ERROR" and getattr(r, "order_id", None)}
    assert errors["ord_z"].getMessage() == "capture left by a ship or a settlement not settled"
    assert isinstance(errors["ord_z"].exc_info[1], PaymentRefused)


def test_a_settlement_request_is_indexed_after_a_pending_refund_and_before_the_other_partitions():
    from core.models import CaptureRequest, PaymentRefund
    from core.money import Money
    from functions.adapters.dynamodb import index_attributes, timestamp
    from tests.builders import NOW
    from tests.unit.conftest import a_stored_order

    order = a_stored_order(("TSHIRT", 1), status=OrderStatus.SHIPPED, replaced_authorizations=["auth_old"])
    assert index_attributes(order)["refund_key"] == {"S": "void"}
    ship_only = order.model_copy(
        update={"captures_requested": [CaptureRequest(shipment_id="shp_1", amount=Money.of("1.00", "USD"))]}
    )
    assert index_attributes(ship_only)["refund_key"] == {"S": "void"}  # a shipment's request: no entry of its own
    settling = order.model_copy(update={"captures_requested": [CaptureRequest(amount=Money.of("2.00", "USD"))]})
    assert index_attributes(settling)["refund_key"] == {"S": "settlement"}
    assert index_attributes(settling)["refund_since"] == {"S": timestamp(settling.last_changed)}
    refund = PaymentRefund(id="ref_1", amount=Money.of("1.00", "USD"), reason="late", status="pending", at=NOW)
    pending = settling.model_copy(update={"payment": settling.payment.model_copy(update={"refunds": [refund]})})
    assert index_attributes(pending)["refund_key"] == {"S": "pending"}
    alone = settling.model_copy(update={"replaced_authorizations": []})
    assert index_attributes(alone)["refund_key"] == {"S": "settlement"}
    assert "refund_key" not in index_attributes(ship_only.model_copy(update={"replaced_authorizations": []}))


def test_orders_with_a_settlement_request_are_read_oldest_first_a_page_at_a_time(aws, monkeypatch):
    from itertools import islice

    from functions.adapters.dynamodb import (
        SETTLEMENT_CAPTURE_KEY,
        UNSETTLED_AUTHORIZATION_KEY,
        DynamoSettlementCaptures,
        timestamp,
    )

    start = utc_now() - timedelta(hours=2)
    ids = [f"ord_{letter * 24}" for letter in "abcd"]
    keys = [SETTLEMENT_CAPTURE_KEY] * 4 + [UNSETTLED_AUTHORIZATION_KEY]
    for n, (each, key) in enumerate(zip([*ids, "ord_" + "e" * 24], keys, strict=True)):
        aws.dynamodb.put_item(
            TableName=aws.tables["OrdersTable"],
            Item={"id": {"S": each}, "refund_key": {"S": key},
                  "refund_since": {"S": timestamp(start + timedelta(minutes=n))}},
        )  # fmt: skip
    requested = DynamoSettlementCaptures(aws.dynamodb, aws.tables["OrdersTable"], page_size=2)
    queries = queries_sent(aws, monkeypatch)

    assert list(requested.requested_since_before(utc_now())) == ids  # never the other partitions' orders
    assert list(requested.requested_since_before(start + timedelta(minutes=1, seconds=30))) == ids[:2]
    queries.clear()
    assert list(islice(requested.requested_since_before(utc_now()), 2)) == ids[:2]
    assert len(queries) == 1 and {q["IndexName"] for q in queries} == {"by_pending_refund"}


def test_a_persons_hold_placed_before_the_sweep_met_a_ship_that_died_is_made_a_park_the_hold_expiry_never_cancels(
    aws, scan, monkeypatch
):
    """A person holds the order after its ship died, before any pass settled that ship's capture:
    the pass refunds the capture and cannot hold the order again. The person's hold stays the
    order's (their reason, note and the status it resumes to), now a park, with the parcel to
    confirm recorded beside it in the history: the hold expiry never cancels it, since the parcel
    may have left (a cancel would put its units back on sale). Only a person ends it."""
    from core.holds import HoldRequest, ReleaseRequest
    from functions.bootstrap import Config, bootstrap

    monkeypatch.setenv("OMS_HOLD_EXPIRY_DAYS", "2")
    order = a_ship_that_died(aws, monkeypatch, "web-held-first")
    (shipment,) = order.shipments
    services = bootstrap(Config.from_env())
    services.holds.hold(order.id, HoldRequest(reason="fraud_review", note="call the customer"), "key_ops")
    key = {"id": {"S": order.id}}
    # Its ship's capture request standing, the hold waits for the sweep: not in the expiry's index,
    # but counted for ShipsToConfirmAlarm already, however long its on_hold deadline.
    assert aws.dynamodb.get_item(TableName=aws.tables["OrdersTable"], Key=key)["Item"]["pickup_pk"] == {
        "S": "ships_to_confirm"
    }
    assert scan()["ships_to_confirm"] == 1

    late = utc_now() + timedelta(hours=24, minutes=20)  # past on_hold=24h, the request long over
    answer = scan(late)
    assert (answer["captures_settled"], answer["ships_held"], answer["ships_unconfirmed"]) == (
        [order.id], [order.id], [],
    )  # fmt: skip
    settled, history = services.order_repository.history(order.id)
    assert settled.captures_requested == [] and settled.payment == order.payment  # refunded: nothing kept
    assert (settled.status, settled.hold.reason, settled.hold.note, settled.hold.resume_to) == (
        OrderStatus.ON_HOLD, "fraud_review", "call the customer", OrderStatus.ALLOCATED,
    )  # fmt: skip
    assert settled.hold.parked and settled.hold_expiry_counts_from is None
    item = aws.dynamodb.get_item(TableName=aws.tables["OrdersTable"], Key=key)["Item"]
    assert item["pickup_pk"] == {"S": "ships_to_confirm"}  # a park: never in the hold expiry's index
    confirm = next(entry for entry in reversed(history) if entry.type == "on_hold")
    assert (confirm.actor, confirm.from_status, confirm.to_status, confirm.detail["shipment_ids"]) == (
        "jeopardy_scan", None, None, [shipment.id],
    )  # fmt: skip
    assert "confirm whether the parcel left" in confirm.detail["note"]

    assert scan(late + timedelta(days=30))["expired"] == []
    assert services.order_repository.get(order.id).status is OrderStatus.ON_HOLD
    assert scan(late + timedelta(days=30, minutes=5))["ships_held"] == []  # made a park once

    # Their release ends their hold alone: the parcel is still to confirm, on the system's hold
    # (read back from the table), which the next release confirms.
    released = services.holds.release(order.id, ReleaseRequest(note="the customer is who they say"), "key_ops")
    stored = services.order_repository.get(order.id)
    assert stored == released
    # Their client's blind retry of it (its answer lost) is known for one: the parcel stays to confirm.
    assert services.holds.release(order.id, ReleaseRequest(note="the customer is who they say"), "key_ops") == stored
    assert services.order_repository.get(order.id) == stored
    assert (stored.status, stored.hold.reason, stored.hold.parked, stored.hold.resume_to) == (
        OrderStatus.ON_HOLD, "other", True, OrderStatus.ALLOCATED,
    )  # fmt: skip
    assert shipment.id in stored.hold.note and stored.hold_expiry_counts_from is None
    item = aws.dynamodb.get_item(TableName=aws.tables["OrdersTable"], Key=key)["Item"]
    assert item["pickup_pk"] == {"S": "ships_to_confirm"}
    answer = scan(late + timedelta(days=31))
    assert (answer["expired"], answer["ships_to_confirm"]) == ([], 1)
    # Released by a person, a hold placed again is an ordinary one, which expires.
    assert services.holds.release(order.id, ReleaseRequest(note="the parcel never left"), "key_ops").hold is None
    assert scan(late + timedelta(days=31, minutes=5))["ships_to_confirm"] == 0
    services.holds.hold(order.id, HoldRequest(reason="other"), "key_ops")
    assert scan(utc_now() + timedelta(days=3))["expired"] == [order.id]


def test_the_hold_expiry_leaves_a_persons_hold_on_an_order_whose_ship_died_to_the_sweep(aws, scan, monkeypatch):
    """The same, with a hold expiry no longer than the hold's deadline (OMS_HOLD_EXPIRY_DAYS=1,
    on_hold=24h): the pass that first finds the order late runs the expiry before it hands the
    order to the sweep, and cancelled it, its capture refunded and its units put back on sale
    while its parcel may have left. A capture request standing on a held order is a ship that
    died (a held order never ships): the expiry leaves it, the sweep makes the hold a park."""
    from core.holds import HoldRequest
    from functions.bootstrap import Config, bootstrap

    monkeypatch.setenv("OMS_HOLD_EXPIRY_DAYS", "1")
    order = a_ship_that_died(aws, monkeypatch, "web-expired-first")
    services = bootstrap(Config.from_env())
    services.holds.hold(order.id, HoldRequest(reason="customer_request"), "key_ops")

    answer = scan(utc_now() + timedelta(days=1, minutes=20))

    assert (answer["expired"], answer["captures_settled"], answer["ships_held"]) == ([], [order.id], [order.id])
    held = services.order_repository.get(order.id)
    assert (held.status, held.hold.reason, held.hold.parked) == (OrderStatus.ON_HOLD, "customer_request", True)
    assert held.shipments[0].status is ShipmentStatus.PENDING
    assert scan(utc_now() + timedelta(days=9))["expired"] == []
