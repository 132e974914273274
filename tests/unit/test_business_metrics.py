"""Business metrics count what the order writes recorded: the core services on the in-memory fakes,
their repository wrapped in MeteredOrders, the EMF records read back from stdout."""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from core.errors import DuplicateOrder, OutOfStock, PaymentDeclined, PaymentRefused, StaleVersion
from core.models import LineInput, OrderEdit
from functions import business_metrics
from functions.business_metrics import MeteredOrders, emits_business_metrics, flush, orders_changed
from tests.builders import NOW, place_order
from tests.unit.conftest import usd
from tests.unit.world import Clock, World, build_world

STOCK = [("TSHIRT", "wh-east", 10), ("TSHIRT", "wh-west", 10), ("MUG", "wh-west", 3)]


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> World:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "OMS")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "oms")
    flush()  # nothing left over from another test on this thread
    capsys.readouterr()
    return build_world(STOCK, wrap_orders=MeteredOrders)


def emitted(capsys: pytest.CaptureFixture[str]) -> dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]:
    """Flush, then {(metric, ((dimension, value), ...)): values} from the EMF records printed."""
    flush()
    found: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = {}
    for line in capsys.readouterr().out.splitlines():
        record = json.loads(line)
        (directive,) = record["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "OMS"
        (names,) = directive["Dimensions"]
        dimensions = tuple((name, record[name]) for name in names)
        for metric in directive["Metrics"]:
            found.setdefault((metric["Name"], dimensions), []).extend(record[metric["Name"]])
    return found


def test_a_placed_order_counts_by_channel_and_its_value_by_channel_and_currency(world, capsys):
    order = world.capture.place(place_order(external_id="web-1", lines=[{"sku": "TSHIRT", "quantity": 2}]), "key_web")

    assert emitted(capsys) == {
        ("OrdersPlaced", (("channel", "web"),)): [1.0],
        ("OrderValue", (("channel", "web"), ("currency", "USD"))): [float(order.totals.grand_total.amount)],
    }
    assert order.totals.grand_total.amount == Decimal(str(float(order.totals.grand_total.amount)))


def test_placing_the_same_order_again_counts_nothing(world, capsys):
    world.capture.place(place_order(external_id="web-1"), "key_web")
    emitted(capsys)

    with pytest.raises(DuplicateOrder):
        world.capture.place(place_order(external_id="web-1"), "key_web")
    assert emitted(capsys) == {}


def test_an_allocation_counts_once_by_channel_however_often_the_steps_run(world, capsys):
    order_id = world.place(("TSHIRT", 1))
    emitted(capsys)

    world.run(order_id)
    world.run(order_id)  # Express runs steps at least once

    assert emitted(capsys) == {("OrdersAllocated", (("channel", "web"),)): [1.0]}


def test_a_declined_authorization_is_a_payment_failure_of_kind_declined(world, capsys):
    order_id = world.place(("TSHIRT", 1), token="tok_decline")
    emitted(capsys)

    with pytest.raises(PaymentDeclined) as declined:
        world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.fail_payment(order_id, "PaymentDeclined", json.dumps({"errorMessage": str(declined.value)}))

    assert emitted(capsys) == {("PaymentFailures", (("kind", "declined"), ("operation", "authorize"))): [1.0]}


@pytest.mark.parametrize(
    ("script", "raised", "failures"),
    [
        (["refuse"], PaymentRefused, {(("kind", "refused"), ("operation", "capture")): [1.0]}),
        (["transient", "approve"], None, {(("kind", "transient"), ("operation", "capture")): [1.0]}),
    ],
)
def test_each_failed_capture_attempt_is_a_payment_failure_by_kind(world, capsys, script, raised, failures):
    order = world.allocated(("TSHIRT", 1))
    emitted(capsys)
    world.gateway.script("capture", *script)

    shipment = order.shipments[0].id
    if raised:
        with pytest.raises(raised):
            world.actions.ship(order.id, shipment, None, actor="key_wh")
    else:
        world.actions.ship(order.id, shipment, None, actor="key_wh")

    counted = {dims: values for (name, dims), values in emitted(capsys).items() if name == "PaymentFailures"}
    assert counted == failures


def test_an_edit_whose_void_of_the_replaced_authorization_is_refused_counts_a_refused_void(world, capsys):
    # The PATCH answers 200 and the sweep never asks a refused void again: this point is what pages
    # a person (VoidsNotMadeAlarm).
    order_id = world.place(("TSHIRT", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.gateway.script("void", "refuse")
    emitted(capsys)

    five = OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=5)])
    edited = world.actions.edit(order_id, world.order(order_id).version, five, "key_web")

    assert edited.replaced_authorizations
    counted = {dims: values for (name, dims), values in emitted(capsys).items() if name == "PaymentFailures"}
    assert counted == {(("kind", "refused"), ("operation", "void")): [1.0]}


def test_a_cancel_by_a_caller_counts_as_requested_whatever_its_free_text(world, capsys):
    order_id = world.place(("TSHIRT", 1))
    emitted(capsys)

    world.actions.cancel(order_id, "customer changed their mind at 3am", actor="key_cs")

    assert emitted(capsys) == {("OrdersCancelled", (("reason", "requested"),)): [1.0]}


@pytest.mark.parametrize(("error", "reason"), [("OutOfStock", "out_of_stock"), ("States.Timeout", "workflow_error")])
def test_a_cancel_by_the_workflow_counts_with_its_reason(world, capsys, error, reason):
    order_id = world.place(("MUG", 3))
    world.workflow.authorize_payment(order_id, attempt=0)
    emitted(capsys)

    world.workflow.cancel_after_failure(order_id, error, "")

    counted = {dims: values for (name, dims), values in emitted(capsys).items() if name == "OrdersCancelled"}
    assert counted == {(("reason", reason),): [1.0]}


def test_an_order_out_of_stock_is_cancelled_out_of_stock_once(world, capsys):
    order_id = world.place(("MUG", 3))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.catalog.put_location(world.catalog.get_location("wh-east").model_copy(update={"ships": False}))
    world.inventory.set_on_hand("MUG", "wh-west", 0, reason="count")
    emitted(capsys)

    with pytest.raises(OutOfStock):
        world.workflow.reserve_stock(order_id)
    world.workflow.cancel_after_failure(order_id, "OutOfStock", "")
    world.workflow.cancel_after_failure(order_id, "OutOfStock", "")

    assert emitted(capsys)[("OrdersCancelled", (("reason", "out_of_stock"),))] == [1.0]


def test_an_expired_pickup_counts_as_cancelled_pickup_expired_once(world, capsys, monkeypatch):
    world.inventory.set_on_hand("TSHIRT", "store-sf", 2, reason="count")
    order = world.allocated(("TSHIRT", 1), fulfillment={"type": "pickup", "location_id": "store-sf"})
    world.actions.ready(order.id, order.shipments[0].id, actor="key_store")
    monkeypatch.setattr(world.actions, "_clock", lambda: NOW + timedelta(days=8))
    emitted(capsys)

    world.actions.expire_pickup(order.id, order.shipments[0].id, actor="pickup_expiry")
    world.actions.expire_pickup(order.id, order.shipments[0].id, actor="pickup_expiry")  # a repeat counts nothing

    counted = {dims: values for (name, dims), values in emitted(capsys).items() if name == "OrdersCancelled"}
    assert counted == {(("reason", "pickup_expired"),): [1.0]}


def test_a_hold_the_jeopardy_scan_expires_counts_as_cancelled_hold_expired(world, capsys):
    from core.holds import HoldRequest, Holds
    from core.jeopardy import HOLD_EXPIRED, JeopardyScan, parse_sla
    from plugins.testing.memory import InMemoryLateOrders

    order_id = world.place(("TSHIRT", 1))
    orders = MeteredOrders(world.orders)  # as the jeopardy function's container builds it
    Holds(orders, clock=lambda: NOW).hold(order_id, HoldRequest(reason="fraud_review"), actor="key_cs")
    emitted(capsys)
    scan = JeopardyScan(
        InMemoryLateOrders(world.orders), orders, world.actions.cancel, lambda: NOW + timedelta(days=2),
        sla=parse_sla(""), hold_expiry=timedelta(days=1),
    )  # fmt: skip

    assert scan.run().expired == [order_id]

    counted = {dims: values for (name, dims), values in emitted(capsys).items() if name == "OrdersCancelled"}
    assert counted == {(("reason", HOLD_EXPIRED),): [1.0]}  # the system's code, not "requested"


def test_a_hold_whose_stock_could_not_be_given_back_counts_once(world, capsys, monkeypatch):
    from core.holds import HoldRequest, Holds

    order_id = world.place(("TSHIRT", 6))
    world.run(order_id)
    order = world.order(order_id)
    world.actions.edit(order_id, order.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=2)]), "key_cs")
    emitted(capsys)

    def unavailable(*args: object, **kwargs: object) -> None:
        raise TimeoutError("the inventory did not answer")

    monkeypatch.setattr(world.inventory, "shrink", unavailable)
    holds = Holds(MeteredOrders(world.orders), clock=lambda: NOW, inventory=world.inventory, catalog=world.catalog)
    holds.hold(order_id, HoldRequest(reason="address_review"), actor="key_ops")

    assert emitted(capsys) == {("SurplusNotGivenBack", ()): [1.0]}


def test_every_function_that_writes_orders_prints_its_business_metrics():
    """MeteredOrders records a point per write; only a handler wrapped in emits_business_metrics
    prints them. Unwrapped, a function's points were never printed (the OrdersCancelled of expired
    holds and pickups, the PaymentFailures of their voids) and piled up in its warm container."""
    import importlib

    from tests.template_iam import RESOURCES, granted

    writers = [
        (logical_id, resource["Properties"]["Handler"])
        for logical_id, resource in RESOURCES.items()
        if resource["Type"] == "AWS::Serverless::Function"
        and ("OrdersTable", "dynamodb:UpdateItem") in granted(logical_id)
    ]
    assert len(writers) >= 8, writers
    for logical_id, handler in writers:
        module, _, name = handler.rpartition(".")
        function = getattr(importlib.import_module(module), name)
        chain = []  # the handler and every function it wraps (functools.wraps keeps __wrapped__)
        while function is not None:
            chain.append(function.__code__)
            function = getattr(function, "__wrapped__", None)
        # Every wrapper emits_business_metrics makes runs its one code object.
        assert emits_business_metrics(len).__code__ in chain, logical_id


def test_every_function_imported_outside_any_fixture_has_the_service_its_alarms_name():
    """A function's module builds its Logger and Metrics at import with the POWERTOOLS_SERVICE_NAME
    it reads then, and stays imported for the rest of the worker's run. A test without the `aws`
    fixture that was first to import one (here, or test_reconciler.py's look at the reconciler's
    reserve) left its metrics without the `service` dimension its alarms name, and its logs with
    "service_undefined", in every later test: the reconciler's metric tests failed after it.
    The suite's process has the variable from its start (tests/conftest.py)."""
    import importlib

    from aws_lambda_powertools import Logger, Metrics

    from tests.template_iam import RESOURCES

    services = {}
    for resource in RESOURCES.values():
        if resource["Type"] == "AWS::Serverless::Function":
            module_name = resource["Properties"]["Handler"].rpartition(".")[0]
            for name, made in vars(importlib.import_module(module_name)).items():
                if isinstance(made, Logger | Metrics):
                    services[f"{module_name}.{name}"] = made.service
    assert {"functions.reconciler.app.metrics", "functions.workflow.park_order.metrics"} <= set(services)
    assert {name: service for name, service in services.items() if service in (None, "", "service_undefined")} == {}


def test_a_refund_counts_and_its_value_by_currency(world, capsys):
    order = world.allocated(("TSHIRT", 1))
    world.actions.ship(order.id, order.shipments[0].id, None, actor="key_wh")
    emitted(capsys)

    world.refunds.issue_refund(order.id, usd("5.00"), "goodwill", "k1", actor="key_cs")
    world.refunds.issue_refund(order.id, usd("5.00"), "goodwill", "k1", actor="key_cs")  # a repeat changes nothing

    assert emitted(capsys) == {
        ("Refunds", (("kind", "refund"),)): [1.0],
        ("RefundValue", (("currency", "USD"),)): [5.0],
    }


def test_a_split_refund_refused_after_a_part_went_back_counts_what_went_back(monkeypatch, capsys):
    # Before: only `payment_refunded` entries counted, and the refusal's `refund_failed` entry
    # carries the part the gateway approved: RefundValue missed money that did go back.
    from tests.unit.test_refund_authorizations import STOCK as PARCELS
    from tests.unit.test_refund_authorizations import renewed_between_parcels

    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "OMS")
    clock = Clock()
    world = build_world(PARCELS, wrap_orders=MeteredOrders, clock=clock)
    first, second = renewed_between_parcels(world, clock)
    emitted(capsys)
    world.gateway.script("refund", "approve", "refuse")

    world.refunds.issue_refund(second.id, second.payment.captured, "goodwill", "k1", actor="key_cs")

    assert world.order(second.id).payment.refunded == first.payment.captured
    found = emitted(capsys)
    assert found[("Refunds", (("kind", "refund"),))] == [1.0]
    assert found[("RefundValue", (("currency", "USD"),))] == [float(first.payment.captured.amount)]


def test_a_write_that_loses_its_race_counts_nothing(world, capsys):
    order_id = world.place(("TSHIRT", 1))
    order = world.order(order_id)
    new, entry = order.cancel("fraud", at=order.updated_at, actor="key_cs")
    metered = MeteredOrders(world.orders)
    metered.update(new, order, [entry])
    emitted(capsys)

    with pytest.raises(StaleVersion):
        metered.update(new, order, [entry])  # `order` is no longer the stored version
    assert emitted(capsys) == {}


def test_the_orders_an_invocation_gave_a_history_entry_are_known_until_it_ends(world, capsys):
    # The API's access log counts a change that wrote no entry as a read of the order it answered.
    order_id = world.place(("TSHIRT", 1))
    emitted(capsys)
    assert orders_changed() == frozenset()

    world.actions.cancel(order_id, "asked", actor="key_cs")
    assert orders_changed() == {order_id}
    emitted(capsys)  # the invocation ends
    world.actions.cancel(order_id, "asked again", actor="key_cs")  # a cancelled order: no entry

    assert orders_changed() == frozenset()

    other = world.place(("TSHIRT", 1))  # written on this thread outside any invocation

    @emits_business_metrics
    def handler() -> frozenset[str]:
        return orders_changed()

    assert other in orders_changed()
    assert handler() == frozenset()
    emitted(capsys)


def test_a_handler_prints_its_metrics_even_when_it_raises(world, capsys):
    @emits_business_metrics
    def handler(order_id: str) -> None:
        world.actions.cancel(order_id, "fraud", actor="key_cs")
        raise RuntimeError("after the write")

    order_id = world.place(("TSHIRT", 1))
    flush()
    capsys.readouterr()
    with pytest.raises(RuntimeError):
        handler(order_id)

    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["reason"], r["OrdersCancelled"]) for r in records] == [("requested", [1.0])]


def test_metrics_that_cannot_be_printed_never_fail_the_invocation_nor_leak_into_the_next(world, capsys, monkeypatch):
    from functions import business_metrics

    @emits_business_metrics
    def handler(order_id: str) -> str:
        world.actions.cancel(order_id, "fraud", actor="key_cs")
        return "answered"

    def unprintable(*_: object, **__: object) -> None:
        raise ValueError("I/O operation on closed file")

    order_id = world.place(("TSHIRT", 1))
    emitted(capsys)
    real = business_metrics.EphemeralMetrics.flush_metrics
    monkeypatch.setattr(business_metrics.EphemeralMetrics, "flush_metrics", unprintable)
    assert handler(order_id) == "answered"
    monkeypatch.setattr(business_metrics.EphemeralMetrics, "flush_metrics", real)
    assert emitted(capsys) == {}
    # The emitter is reused: the next record carries its own metric and dimension only.
    business_metrics.record("OrdersPlaced", channel="web")
    assert emitted(capsys) == {("OrdersPlaced", (("channel", "web"),)): [1.0]}


def test_an_over_capture_refund_left_to_a_person_counts_for_its_alarm(world, capsys):
    # Written once, by the refusal that leaves it to a person (core.unit_cancellation): the point
    # OverCapturesNotRefundedAlarm pages on; the refusals before it count only as PaymentFailures.
    from core.events import OrderEvent
    from core.models import HistoryEntry
    from functions.business_metrics import entry_recorded

    order = world.order(world.place(("TSHIRT", 1)))
    emitted(capsys)
    detail = {"amount": {"amount": "2.00", "currency": "USD"}, "refusals": 3}

    entry_recorded(order, HistoryEntry(at=NOW, type=OrderEvent.OVER_CAPTURE_NOT_REFUNDED, actor="k", detail=detail))

    assert emitted(capsys) == {("OverCapturesNotRefunded", ()): [1.0]}


def test_a_give_back_of_a_replacements_credit_the_gateway_refused_counts_for_its_alarm_once(monkeypatch, capsys):
    # Before: a refused give-back of the credit a replacement did not use was left to a person (no
    # pass asks it again) with nothing but a failed refund on the original order: no metric, no
    # alarm, so no person heard of it. It is counted once, by the write that recorded the refusal
    # (CreditsNotGivenBackAlarm); a repeat of the cancel asks nothing again and counts nothing.
    from tests.unit.test_returns import STOCK as RETURNS_STOCK
    from tests.unit.test_returns import exchanged

    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "OMS")
    clock = Clock(NOW + timedelta(days=3))
    world = build_world(RETURNS_STOCK, wrap_orders=MeteredOrders, clock=clock)
    _, order, settled = exchanged(world, clock, ("TSHIRT", 1), ("TSHIRT", 1), ("CAP", 1))
    replacement = world.run(settled.exchange_order_id or "")
    emitted(capsys)
    world.gateway.script("refund", "refuse")

    world.actions.cancel(replacement.id, "changed my mind", actor="key_cs")

    assert [r.status for r in world.order(order.id).payment.refunds] == ["failed"]
    counted = emitted(capsys)
    assert counted[("CreditsNotGivenBack", ())] == [1.0]
    assert counted[("PaymentFailures", (("kind", "refused"), ("operation", "refund")))] == [1.0]
    world.gateway.script("refund", "approve")
    world.actions.cancel(replacement.id, "changed my mind", actor="key_cs")
    assert ("CreditsNotGivenBack", ()) not in emitted(capsys)


def test_a_refused_refund_of_anything_else_is_not_counted_as_a_credit_not_given_back(world, capsys):
    order_id = world.place(("TSHIRT", 1))
    world.run(order_id)
    shipment = world.order(order_id).shipments[0].id
    world.actions.ship(order_id, shipment, None, actor="key_wh")
    emitted(capsys)
    world.gateway.script("refund", "refuse")

    refund = world.refunds.issue_refund(order_id, usd("1.00"), "goodwill", "appease-1", actor="key_cs")

    assert refund is not None and refund.status == "failed"
    counted = emitted(capsys)
    assert counted[("PaymentFailures", (("kind", "refused"), ("operation", "refund")))] == [1.0]
    assert ("CreditsNotGivenBack", ()) not in counted


def test_a_refused_give_back_of_a_replacements_credit_names_its_order_for_the_alarms_runbook(monkeypatch, caplog):
    # Before: CreditsNotGivenBackAlarm's metric has no dimension, and nothing logged the refusal,
    # so the person it called could not find the order its runbook tells them to look at (nor the
    # amount to give back). The write that records the refusal logs it at ERROR, naming the order
    # the failed refund is on, the refund and what was not given back; a repeat logs nothing more.
    # The runbook's Logs Insights filter matches that line.
    from tests.unit.test_returns import STOCK as RETURNS_STOCK
    from tests.unit.test_returns import exchanged

    clock = Clock(NOW + timedelta(days=3))
    world = build_world(RETURNS_STOCK, clock=clock)
    _, order, settled = exchanged(world, clock, ("TSHIRT", 1), ("TSHIRT", 1), ("CAP", 1))
    replacement = world.run(settled.exchange_order_id or "")
    world.gateway.script("refund", "refuse")
    caplog.set_level("ERROR")

    world.actions.cancel(replacement.id, "changed my mind", actor="key_cs")

    (failed,) = world.order(order.id).payment.refunds
    assert failed.status == "failed"
    logged = [r for r in caplog.records if r.levelname == "ERROR" and "did not use" in r.getMessage()]
    assert [(r.__dict__.get("order_id"), r.__dict__.get("refund_id"), r.__dict__.get("amount")) for r in logged] == [
        (order.id, failed.id, str(failed.amount.amount))
    ]
    assert failed.id in logged[0].getMessage() and str(failed.amount.amount) in logged[0].getMessage()
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    runbook = readme[readme.index("### `CreditsNotGivenBackAlarm`") :].split("\n### ", 1)[0]
    assert "logs ApiFunction 'message like /did not use its credit/'" in runbook
    caplog.clear()
    world.gateway.script("refund", "approve")
    world.actions.cancel(replacement.id, "changed my mind", actor="key_cs")
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_the_records_an_invocation_prints_are_pinned_byte_for_byte(world, capsys):
    # The exact lines CloudWatch parses: key order, separators, the units, the float values and the
    # dimension arrays. Only the timestamp (the time of printing) is left out of the comparison.
    @emits_business_metrics
    def handler() -> str:
        order = world.capture.place(place_order(external_id="web-9", lines=[{"sku": "TSHIRT", "quantity": 2}]), "k")
        business_metrics.record("SurplusNotGivenBack")
        business_metrics.record("OverCapturesNotRefunded")
        business_metrics.record("OverCapturesNotRefunded")
        return str(order.totals.grand_total.amount)

    before = int(time.time() * 1000)
    total = handler()
    after = int(time.time() * 1000)

    lines = capsys.readouterr().out.splitlines()
    stamps = [int(re.search(r'"Timestamp":(\d+),', line).group(1)) for line in lines]  # type: ignore[union-attr]
    assert all(before <= stamp <= after for stamp in stamps)
    assert total == "47.88"
    assert [re.sub(r'"Timestamp":\d+,', '"Timestamp":0,', line) for line in lines] == [
        '{"_aws":{"Timestamp":0,"CloudWatchMetrics":[{"Namespace":"OMS","Dimensions":[["channel"]],'
        '"Metrics":[{"Name":"OrdersPlaced","Unit":"Count"}]}]},"channel":"web","OrdersPlaced":[1.0]}',
        '{"_aws":{"Timestamp":0,"CloudWatchMetrics":[{"Namespace":"OMS","Dimensions":[["channel","currency"]],'
        '"Metrics":[{"Name":"OrderValue","Unit":"None"}]}]},"channel":"web","currency":"USD",'
        '"OrderValue":[47.88]}',
        '{"_aws":{"Timestamp":0,"CloudWatchMetrics":[{"Namespace":"OMS","Dimensions":[[]],'
        '"Metrics":[{"Name":"SurplusNotGivenBack","Unit":"Count"},{"Name":"OverCapturesNotRefunded","Unit":"Count"}]}]},'
        '"SurplusNotGivenBack":[1.0],"OverCapturesNotRefunded":[1.0,1.0]}',
    ]
    handler_without_points = emits_business_metrics(lambda: None)
    handler_without_points()
    assert capsys.readouterr().out == ""  # and nothing is carried into the next invocation


def test_a_booking_its_carrier_will_not_cancel_counts_for_its_alarm_once(monkeypatch, capsys, caplog):
    # The carrier refused to cancel a label no parcel will use (scanned already, its void window
    # past): it bills the merchant for it, and no pass asks again. The history alone recorded it,
    # which nobody reads for every order: CarrierBookingsNotCancelledAlarm calls a person.
    from tests.unit.test_carrier_bookings import Carrier

    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "OMS")
    carrier = Carrier()
    world = build_world([("MUG", "wh-west", 10)], carrier, wrap_orders=MeteredOrders)
    order = world.allocated(("MUG", 1))
    carrier.refuses = True
    emitted(capsys)

    caplog.set_level("ERROR")

    world.actions.cancel(order.id, "changed my mind", actor="key_web")
    world.actions.finish_carrier_work(world.order(order.id), "reconciler")  # asks nothing more

    assert emitted(capsys).get(("CarrierBookingsNotCancelled", ())) == [1.0]
    (shipment,) = order.shipments
    logged = [r for r in caplog.records if "carrier booking not cancelled" in r.getMessage()]
    assert [(r.levelname, r.__dict__.get("order_id"), r.__dict__.get("tracking_number")) for r in logged] == [
        ("ERROR", order.id, shipment.tracking_number)
    ]
    assert logged[0].__dict__.get("reason") == "the carrier will not cancel it"
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    runbook = readme[readme.index("### `CarrierBookingsNotCancelledAlarm`") :].split("\n### ", 1)[0]
    assert "message like /carrier booking not cancelled/" in runbook


@pytest.mark.parametrize(
    ("carrier", "reason"),
    [
        # A CreateShipments that failed keeps the key it asked under as a booking maybe made;
        # settled as no plugin's (none made it), it cost nothing.
        (None, "no carrier plugin made a booking under its key"),
        # A carrier plugin without the optional cancel hook: every booking it gives up (the
        # deployment's choice, README "oms_carrier_cancel_shipment"), not one to call a person for.
        ("Acme Courier", "no carrier plugin cancels bookings of Acme Courier"),
    ],
)
def test_a_booking_no_plugin_answered_for_counts_nothing_for_that_alarm(world, capsys, carrier, reason):
    from core.events import OrderEvent
    from core.models import HistoryEntry
    from functions.business_metrics import entry_recorded

    order = world.order(world.place(("TSHIRT", 1)))
    emitted(capsys)
    detail = {"shipment_id": "shp_x", "carrier": carrier, "tracking_number": None, "booking_key": "shp_x",
              "reason": reason}  # fmt: skip

    entry_recorded(order, HistoryEntry(at=NOW, type=OrderEvent.CARRIER_BOOKING_NOT_CANCELLED, actor="k", detail=detail))

    assert ("CarrierBookingsNotCancelled", ()) not in emitted(capsys)
