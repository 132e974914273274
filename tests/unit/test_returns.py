"""Returns (core.returns.Returns) on the in-memory fakes with the real built-in plugins: request,
the return policy, approval, the return label, receiving, restocking and the order's status."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

import pytest
from pydantic import ValidationError

from core import hookimpl
from core.access_log import AccessLog, OrderRead
from core.errors import (
    Backordered,
    Conflict,
    InvalidRequest,
    InvalidTransition,
    NoPaymentPlugin,
    NotFound,
    OrderClosed,
    PaymentGatewayUnavailable,
    PluginError,
    RefundExceedsCaptured,
    StaleVersion,
    TransientError,
    UnknownSku,
)
from core.events import OrderEvent
from core.exchange_credit import ExchangeCredits
from core.ids import order_id_for
from core.models import MAX_ON_HAND, LineInput, Order, OrderEdit, utc_text
from core.money import Money
from core.payments import Payments
from core.pricing_types import PricingDraft, ShippingQuote
from core.refund_service import PendingRefundSweep, RefundService
from core.return_models import ReceiveReturn, RequestReturn, Return, ReturnLine, ReturnPolicyDecision
from core.returns import ExchangeIdTaken, RefundNotDone, ReturnNotReceived, Returns, return_booking_key, return_id_for
from core.services import OrderQueries
from core.status import RETURN_TRANSITIONS, OrderStatus, PaymentStatus, ReturnStatus
from functions.plugin_loading import load_plugin_manager
from plugins import test_payments
from tests.builders import NOW, location, product
from tests.fakes import FakeReturns, PaymentSpy, ScriptedGateway, run_return_workflow
from tests.unit.conftest import usd
from tests.unit.test_access_log import Reads
from tests.unit.test_payment_truth import Removed
from tests.unit.world import Clock, Died, World, before_the_next_write, build_world, dies_before_recording

S = OrderStatus
R = ReturnStatus

# MUG is only in the west and CAP only in the east: an order of both ships in two parcels.
STOCK = [("TSHIRT", "wh-west", 10), ("MUG", "wh-west", 3), ("CAP", "wh-east", 4)]


class ApprovalPolicy:
    """A shop's policy answering first: every return needs a person, and a 1.50 restocking fee."""

    @hookimpl(tryfirst=True)
    def oms_return_policy(self, order: Order) -> ReturnPolicyDecision:
        return ReturnPolicyDecision(needs_approval=True, fee=Money(amount="1.50", currency=order.currency))


def returns_for(world: World, clock: Clock, *extra: object) -> tuple[Returns, FakeReturns]:
    plugins = load_plugin_manager(*extra, enable_test_payments=True)
    refunds = RefundService(world.orders, Payments(plugins, sleep=lambda seconds: None), clock)
    store = world.returns
    service = Returns(
        world.orders, store, world.catalog, world.inventory, world.labels, plugins.hook, refunds, clock=clock,
        capture=world.capture,
    )  # fmt: skip
    return service, store


def shipped(world: World, *lines: tuple[str, int], deliver: bool = True, token: str = "tok_approve") -> Order:
    order = world.allocated(*lines, token=token)
    for shipment in order.shipments:
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")
        if deliver:
            world.actions.deliver(order.id, shipment.id, actor="key_wh")
    return world.order(order.id)


def appeasement_left_pending(world: World, order: Order) -> None:
    """An appeasement of everything captured that the gateway has not answered (it stays pending)."""
    world.gateway.script("refund", "transient")
    with pytest.raises(PaymentGatewayUnavailable):
        world.refunds.issue_refund(order.id, order.payment.captured, "goodwill", "appease-1", actor="key_cs")


def ask(*lines: tuple[str, int, str | None]) -> RequestReturn:
    return RequestReturn.model_validate(
        {"lines": [{"line_id": lid, "quantity": q, "reason": "customer says so", "reason_code": code}
                   for lid, q, code in lines]}
    )  # fmt: skip


def receipt(location_id: str, *lines: tuple[str, int, str]) -> ReceiveReturn:
    return ReceiveReturn.model_validate(
        {"location_id": location_id, "lines": [{"line_id": lid, "quantity": q, "condition": c} for lid, q, c in lines]}
    )


@pytest.fixture
def world() -> World:
    """At NOW on a clock of its own: `clock`, three days on, is the returns'."""
    return build_world(STOCK)


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW + timedelta(days=3))


def test_every_return_status_has_a_row_and_the_contract_values():
    assert set(RETURN_TRANSITIONS) == set(ReturnStatus)
    assert [s.value for s in ReturnStatus] == [
        "requested", "authorized", "rejected", "received", "refunded", "cancelled"
    ]  # fmt: skip


@pytest.mark.parametrize("status", list(ReturnStatus))
def test_only_a_received_return_is_recorded_refunded(status):
    # Return.refunded checks nothing itself: the transition table is all that stops a refund being
    # recorded on a return that is cancelled, rejected or not received yet.
    requested = Return(
        id="rma_aaaaaaaaaaaaaaaaaaaaaaaa", order_id="ord_aaaaaaaaaaaaaaaaaaaaaaaa", channel="web", ordinal=1,
        status=R.REQUESTED, lines=[ReturnLine(line_id="L1", quantity=2, reason="too small")],
        refund=Money.of("0.00", "USD"), fee=Money.of("0.00", "USD"), created_at=NOW, updated_at=NOW, version=1,
    )  # fmt: skip
    current = requested.model_copy(update={"status": status})

    if status in (R.RECEIVED, R.REFUNDED):  # refunded again: a repeat records what it recorded
        assert current.refunded(Money.of("5.00", "USD"), at=NOW).status is R.REFUNDED
    else:
        with pytest.raises(InvalidTransition, match=f"cannot go from {status} to refunded"):
            current.refunded(Money.of("5.00", "USD"), at=NOW)


def test_each_new_version_of_a_return_is_validated_its_lines_and_label_too():
    """model_copy does not validate: a label and the lines a receipt counts go through methods that
    validate the return as a new one, so a count or a label a change got wrong is refused, not stored."""
    requested = Return(
        id="rma_aaaaaaaaaaaaaaaaaaaaaaaa", order_id="ord_aaaaaaaaaaaaaaaaaaaaaaaa", channel="web", ordinal=1,
        status=R.REQUESTED, lines=[ReturnLine(line_id="L1", quantity=2, reason="too small")],
        refund=Money.of("0.00", "USD"), fee=Money.of("0.00", "USD"), created_at=NOW, updated_at=NOW, version=1,
    )  # fmt: skip
    approved = requested.approve(None, at=NOW)
    labelled = approved.labelled("flat", "1Z1", "labels/rma/label.pdf")
    assert (labelled.label_url, labelled.version) == ("labels/rma/label.pdf", approved.version)
    assert approved.labelled("flat", None, None) is approved  # nothing booked: as it is
    with pytest.raises(ValidationError, match="label_url"):
        approved.labelled("flat", "1Z1", 42)  # type: ignore[arg-type]
    line = approved.lines[0]
    wrongs = [
        ({"received_quantity": 3}, "3 received of 2"),
        ({"resellable_quantity": 1}, "1 resellable of 0"),
        ({"received_quantity": -1}, "greater than or equal to 0"),
    ]
    for wrong, said in wrongs:
        with pytest.raises(ValidationError, match=said):
            approved._next(R.RECEIVED, NOW, lines=[line.model_copy(update=wrong)])


@pytest.mark.parametrize("body", ["request", "receipt"])
def test_a_line_of_no_units_is_refused_naming_its_quantity(body):
    # A return asking for 0 units of a line, or a receipt counting 0, says nothing: 422 on the line.
    with pytest.raises(ValidationError) as refused:
        if body == "request":
            ask(("L1", 0, None))
        else:
            receipt("wh-west", ("L1", 0, "resellable"))
    assert [error["loc"] for error in refused.value.errors()] == [("lines", 0, "quantity")]


def test_a_receipt_of_no_lines_is_refused():
    # Nothing counted would receive the return with nothing back: it would end refunded, for nothing.
    with pytest.raises(ValidationError) as refused:
        receipt("wh-west")
    assert [error["loc"] for error in refused.value.errors()] == [("lines",)]


def test_a_line_listed_twice_is_refused_naming_the_repeat():
    # One unit of a line listed twice would each fit what is left to return, and ask for two; a
    # receipt may list a line once per condition, so a condition twice would count its units twice.
    with pytest.raises(ValidationError) as asked_twice:
        ask(("L1", 1, None), ("L2", 1, None), ("L1", 1, None))
    with pytest.raises(ValidationError) as counted_twice:
        receipt("wh-west", ("L1", 1, "resellable"), ("L1", 1, "damaged"), ("L1", 1, "resellable"))

    assert [error["loc"] for error in asked_twice.value.errors()] == [("lines", 2, "line_id")]
    assert [error["loc"] for error in counted_twice.value.errors()] == [("lines", 2, "condition")]
    assert "repeats the line_id of lines[0]" in str(asked_twice.value)


def test_shipping_records_each_lines_shipped_quantity(world):
    order = shipped(world, ("TSHIRT", 2), ("MUG", 1), deliver=False)

    assert [(line.line_id, line.shipped_quantity, line.returned_quantity) for line in order.lines] == [
        ("L1", 2, 0), ("L2", 1, 0)
    ]  # fmt: skip


def test_a_return_of_delivered_units_is_authorized_at_once_with_a_return_label(world, clock):
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 2))

    item = returns.request(order.id, ask(("L1", 1, "size_or_fit")), actor="key_cs")

    assert item.id == return_id_for(order.id, 1)
    assert (item.status, item.ordinal, item.return_to, item.channel) == (R.AUTHORIZED, 1, "wh-west", order.channel)
    assert item.fee == Money.zero("USD") and item.refund == Money.zero("USD") and not item.refund_shipping
    assert item.carrier == "OMS Flat Rate" and item.tracking_number.startswith("OMS")
    key = return_booking_key(item.id, "wh-west", [("L1", 1)], 200)  # stored under its booking's key
    assert item.label_url == f"labels/{order.id}/{key}"
    assert world.labels.labels[key].startswith(b"%PDF")
    requested = [e for e in world.history(order.id) if e.type is OrderEvent.RETURN_REQUESTED]
    assert [(e.actor, e.detail["return_id"]) for e in requested] == [("key_cs", item.id)]


def test_returning_more_than_shipped_minus_earlier_returns_is_422_naming_the_line(world, clock):
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 2))
    returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")

    with pytest.raises(InvalidRequest) as refused:
        returns.request(order.id, ask(("L1", 2, None)), actor="key_cs")

    assert refused.value.details[0]["field"] == "lines[0].quantity"
    second = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")
    assert second.ordinal == 2


def test_a_line_the_order_lacks_is_422_saying_so_not_that_too_many_units_were_asked(world, clock):
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 2))

    with pytest.raises(InvalidRequest) as refused:
        returns.request(order.id, ask(("L9", 1, None)), actor="key_cs")
    assert refused.value.message == f"order {order.id} has no such line"
    assert refused.value.details == [{"field": "lines[0].line_id", "message": f"order {order.id} has no L9"}]

    with pytest.raises(InvalidRequest) as refused:  # both faults: the sentence names both
        returns.request(order.id, ask(("L9", 1, None), ("L1", 3, None)), actor="key_cs")
    assert refused.value.message == (
        f"order {order.id} has no such line, and more units than were shipped and not yet returned"
    )
    assert [d["field"] for d in refused.value.details] == ["lines[0].line_id", "lines[1].quantity"]


def test_only_shipped_units_can_be_returned(world, clock):
    returns, _ = returns_for(world, clock)
    order = world.allocated(("MUG", 1), ("CAP", 1))  # two parcels
    first = next(s for s in order.shipments if s.location_id == "wh-west")
    world.actions.ship(order.id, first.id, None, actor="key_wh")

    with pytest.raises(InvalidRequest):
        returns.request(order.id, ask(("L2", 1, None)), actor="key_cs")  # the CAP has not left
    assert returns.request(order.id, ask(("L1", 1, None)), actor="key_cs").status is R.AUTHORIZED


def test_a_return_on_an_order_with_nothing_shipped_is_409(world, clock):
    returns, _ = returns_for(world, clock)
    order = world.allocated(("TSHIRT", 1))

    with pytest.raises(Conflict) as refused:
        returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")

    assert refused.value.code == "nothing_shipped"


def test_after_the_window_the_built_in_policy_refuses_with_return_window_closed(world, clock, monkeypatch):
    monkeypatch.setenv("OMS_RETURN_WINDOW_DAYS", "2")
    returns, store = returns_for(world, clock)  # three days after delivery
    order = shipped(world, ("TSHIRT", 1))

    with pytest.raises(InvalidRequest) as refused:
        returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")

    assert refused.value.code == "return_window_closed"
    # The 422 names the line whose window closed (API.md: details list {field, message}).
    assert refused.value.details == [{"field": "lines[0].line_id", "message": refused.value.message}]
    assert store.returns == {}


def test_the_return_window_takes_fractions_of_days_as_its_number_parameter_allows(monkeypatch):
    # ReturnWindowDays is a template Number (30.5 deploys): read with int(), every return request failed.
    from plugins.return_policy import window

    monkeypatch.setenv("OMS_RETURN_WINDOW_DAYS", "2.5")

    assert window() == timedelta(days=2.5)


def test_a_refusal_names_the_window_as_set_fractions_included(world, clock, monkeypatch):
    # A window of 2.5 days was named by its whole days: "left more than 2 days ago" (0.5: "0 days").
    monkeypatch.setenv("OMS_RETURN_WINDOW_DAYS", "2.5")
    returns, _ = returns_for(world, clock)  # three days after delivery
    order = shipped(world, ("TSHIRT", 1))

    with pytest.raises(InvalidRequest) as refused:
        returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")

    assert refused.value.code == "return_window_closed"
    assert "more than 2.5 days ago" in refused.value.message, refused.value.message


@pytest.mark.parametrize(("deliver", "event"), [(True, "delivered"), (False, "shipped")])
def test_a_refusal_says_whether_the_window_ran_from_the_lines_delivery_or_its_shipment(
    world, clock, monkeypatch, deliver, event
):
    # Seen on make run: "line L1 left more than 30 days ago (<its delivery date>)": the date was the
    # delivery's, which the window counts from, and a desk reading "left" looks for a ship date.
    monkeypatch.setenv("OMS_RETURN_WINDOW_DAYS", "2")
    returns, _ = returns_for(world, clock)  # three days after the order shipped (and was delivered)
    order = shipped(world, ("TSHIRT", 1), deliver=deliver)
    (parcel,) = order.shipments
    started = parcel.delivered_at if deliver else parcel.shipped_at
    assert started is not None

    with pytest.raises(InvalidRequest) as refused:
        returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")

    assert refused.value.message == (
        f"line L1 was {event} more than 2 days ago ({started.date().isoformat()}); the return window is closed"
    )


@pytest.mark.parametrize("raw", ["-1", "36501", "99999999999", "1e10", "inf", "nan", "thirty"])
def test_a_return_window_that_cannot_be_a_wait_is_refused_by_name(monkeypatch, raw: str):
    # 99999999999 days overflowed timedelta, and nan or 1e10 failed int(), each with an error
    # naming no setting, on every return request.
    from plugins.return_policy import window

    monkeypatch.setenv("OMS_RETURN_WINDOW_DAYS", raw)

    with pytest.raises(ValueError, match=r"^OMS_RETURN_WINDOW_DAYS must be a number of days from 0 to 36500"):
        window()


@pytest.mark.parametrize(
    ("raw", "days"), [(" 30 ", 30), ("1_000", 1000), ("\u0663\u0660", 30), ("3e1", 30), ("30.", 30)]
)
def test_a_return_window_in_any_spelling_of_a_number_is_taken(monkeypatch, raw: str, days: float):
    # The function sees only what the deploy of ReturnWindowDays let through, and CloudFormation's
    # grammar of a Number is not documented: a spelling it might take (" 30 ", as Java's number
    # parsing does) failed the plugin's load, and every return with it. `make run` still refuses
    # what a deploy surely would (infra.local.template.parameter_refused).
    from plugins.return_policy import window

    monkeypatch.setenv("OMS_RETURN_WINDOW_DAYS", raw)

    assert window() == timedelta(days=days)


LOAD_WITH_WINDOW = """
import json, sys
from functions.plugin_loading import load_plugin_manager
manager = load_plugin_manager()
print(json.dumps({info.name: info.reason for info in manager.broken}))
"""


@pytest.mark.parametrize("raw", ["abc", "-1", "nan"])
def test_a_malformed_return_window_fails_the_plugin_s_load_naming_the_setting(raw: str):
    # It was read at each return request only: every one answered 500 plugin_error, and /health
    # said nothing. A fresh interpreter, as a new container is (the module is imported once).
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "OMS_RETURN_WINDOW_DAYS": raw}
    out = subprocess.run([sys.executable, "-c", LOAD_WITH_WINDOW], cwd=Path(__file__).resolve().parents[2],
                         env=env, capture_output=True, text=True, check=True)  # fmt: skip
    broken = json.loads(out.stdout)

    assert list(broken) == ["return_policy"]
    assert "OMS_RETURN_WINDOW_DAYS must be a number of days from 0 to 36500" in broken["return_policy"]


def test_a_return_window_of_0_days_refuses_every_return(world, monkeypatch):
    # ReturnWindowDays=0 turns returns off: a return asked the moment its parcel was delivered was
    # still taken (the window closed only once time had passed since).
    monkeypatch.setenv("OMS_RETURN_WINDOW_DAYS", "0")
    returns, store = returns_for(world, Clock(NOW))
    order = shipped(world, ("TSHIRT", 1))
    assert order.shipments[0].delivered_at == NOW

    with pytest.raises(InvalidRequest) as refused:
        returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")

    assert refused.value.code == "return_window_closed"
    assert "returns are not taken" in refused.value.message, refused.value.message
    assert store.returns == {}


class EscapingRefusal:
    """A policy whose refusal quotes what the shop's service said, terminal escapes and a bidi override included."""

    @hookimpl(tryfirst=True)
    def oms_return_policy(self, order: Order) -> ReturnPolicyDecision:
        return ReturnPolicyDecision.model_construct(allowed=False, code="final_sale", message="Final sale\x1b[2J\u202e")


def test_a_policys_refusal_reaches_the_client_with_controls_and_bidi_overrides_made_visible(world, clock):
    # Refusing the message would turn the policy's 422 into a 500; it is made safe as a rule's note is.
    returns, store = returns_for(world, clock, EscapingRefusal())
    order = shipped(world, ("TSHIRT", 1))

    with pytest.raises(InvalidRequest) as refused:
        returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")

    assert (refused.value.code, refused.value.message) == ("final_sale", "Final sale\ufffd[2J\ufffd")
    assert store.returns == {}


class ForeignFee:
    """A policy that charges its restocking fee in another currency than the order's (or, given
    another amount, a fee that is no fee: below zero, it would add to the refund)."""

    def __init__(self, amount: str = "1.50", currency: str = "EUR"):
        self.fee = Money(amount=amount, currency=currency)

    @hookimpl(tryfirst=True)
    def oms_return_policy(self) -> ReturnPolicyDecision:
        return ReturnPolicyDecision(fee=self.fee)


@pytest.mark.parametrize(("amount", "currency"), [("1.50", "EUR"), ("-1.50", "USD")], ids=["foreign", "negative"])
def test_a_fee_in_another_currency_or_below_zero_is_a_plugin_error_naming_the_policy(world, clock, amount, currency):
    # The runbook reads the failing plugin from a plugin_error: this one named none.
    policy = ForeignFee(amount, currency)  # registered in code, so named by its class
    returns, store = returns_for(world, clock, policy)
    order = shipped(world, ("TSHIRT", 1))

    with pytest.raises(PluginError, match=f"plugin ForeignFee returned a fee of {amount} {currency}") as refused:
        returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")

    assert refused.value.details == [{"plugin": "ForeignFee", "hook": "oms_return_policy"}]
    assert store.returns == {}


def test_the_window_runs_from_shipment_when_not_yet_delivered(world, clock, monkeypatch):
    monkeypatch.setenv("OMS_RETURN_WINDOW_DAYS", "3")
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 2), deliver=False)

    assert returns.request(order.id, ask(("L1", 1, None)), actor="key_cs").status is R.AUTHORIZED
    clock.now += timedelta(days=1)
    with pytest.raises(InvalidRequest) as refused:  # the other T-shirt: shipped 4 days ago
        returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")
    assert refused.value.code == "return_window_closed"


def returnable_until_day_40(returns: Returns, clock: Clock, order_id: str) -> None:
    """Asserts a unit of the order's L1 may be returned on day 35 and is refused on day 41
    (`return_window_closed`): the default 30 days from its delivery on day 10."""
    clock.now = NOW + timedelta(days=35)
    assert returns.request(order_id, ask(("L1", 1, None)), actor="key_cs").status is R.AUTHORIZED
    clock.now = NOW + timedelta(days=41)
    with pytest.raises(InvalidRequest) as refused:
        returns.request(order_id, ask(("L1", 1, None)), actor="key_cs")
    assert refused.value.code == "return_window_closed"


def test_the_window_runs_from_delivery_when_the_parcel_took_days_to_arrive(clock):
    # Shipped on day 0 and delivered on day 10: the default 30 days run to day 40, not day 30.
    world_clock = Clock()
    world = build_world(STOCK, clock=world_clock)
    returns, _ = returns_for(world, clock)
    order = world.allocated(("TSHIRT", 2))
    [shipment] = order.shipments
    world.actions.ship(order.id, shipment.id, None, actor="key_wh")
    world_clock.days_later(10)
    world.actions.deliver(order.id, shipment.id, actor="key_wh")

    returnable_until_day_40(returns, clock, order.id)


def test_a_line_split_over_two_parcels_is_returnable_until_the_later_parcels_window_closes(clock):
    world_clock = Clock()
    world = build_world([("TSHIRT", "wh-west", 1), ("TSHIRT", "wh-east", 1)], clock=world_clock)
    returns, _ = returns_for(world, clock)
    order = world.allocated(("TSHIRT", 2))
    assert len(order.shipments) == 2
    for shipment in order.shipments:  # delivered on day 0 and on day 10
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")
        world.actions.deliver(order.id, shipment.id, actor="key_wh")
        world_clock.days_later(10)

    returnable_until_day_40(returns, clock, order.id)


def test_a_lines_window_runs_from_its_own_parcel_not_a_later_one_of_other_lines(clock):
    # The T-shirt was delivered on day 0, the cap (another warehouse's parcel) on day 10.
    world_clock = Clock()
    world = build_world(STOCK, clock=world_clock)
    returns, _ = returns_for(world, clock)
    order = world.allocated(("TSHIRT", 1), ("CAP", 1))
    for shipment in sorted(order.shipments, key=lambda s: s.location_id != "wh-west"):
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")
        world.actions.deliver(order.id, shipment.id, actor="key_wh")
        world_clock.days_later(10)
    clock.now = NOW + timedelta(days=35)

    with pytest.raises(InvalidRequest) as refused:
        returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")
    assert refused.value.code == "return_window_closed"
    assert returns.request(order.id, ask(("L2", 1, None)), actor="key_cs").status is R.AUTHORIZED


@pytest.mark.parametrize(
    ("lines", "refund_shipping"),
    [
        pytest.param([("L1", 2, "damaged"), ("L2", 1, "wrong_item")], True, id="whole-order-shop-fault"),
        pytest.param([("L1", 2, "damaged"), ("L2", 1, "size_or_fit")], False, id="whole-order-one-not-a-fault"),
        pytest.param([("L1", 1, "defective")], False, id="part-of-the-order"),
    ],
)
def test_the_built_in_policy_refunds_shipping_only_when_the_whole_order_comes_back_for_a_fault(
    world, clock, lines, refund_shipping
):
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 2), ("MUG", 1))
    item = returns.request(order.id, ask(*lines), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", *[(line_id, q, "resellable") for line_id, q, _ in lines]), "key_wh")

    settled = run_return_workflow(returns, item.id, actor="key_wh")

    tshirts, mug = order.lines
    units = tshirts.total + mug.total if len(lines) == 2 else Money.of(tshirts.total.amount / 2, "USD")
    assert settled.refund == (units + order.totals.shipping if refund_shipping else units)
    assert world.order(order.id).payment.refunds[0].shipping == (order.totals.shipping if refund_shipping else None)


def test_a_policy_asking_for_approval_makes_a_requested_return_without_a_label_until_approved(world, clock):
    returns, _ = returns_for(world, clock, ApprovalPolicy())
    order = shipped(world, ("TSHIRT", 2))

    item = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")
    assert (item.status, item.label_url, item.fee) == (R.REQUESTED, None, Money(amount="1.50", currency="USD"))

    approved = returns.approve(item.id, "ok by Sam", actor="key_lead")

    assert (approved.status, approved.note) == (R.AUTHORIZED, "ok by Sam")
    key = return_booking_key(item.id, "wh-west", [("L1", 1)], 200)
    assert approved.label_url == f"labels/{order.id}/{key}" and key in world.labels.labels
    with pytest.raises(InvalidTransition):
        returns.reject(item.id, None, actor="key_lead")


class CarrierDownOnce:
    """A carrier that cannot book the first return label asked of it (then lets the built-in one answer)."""

    def __init__(self):
        self.calls = 0

    @hookimpl(tryfirst=True)
    def oms_carrier_return_label(self, return_id: str) -> None:
        self.calls += 1
        if self.calls == 1:
            raise TransientError("the carrier is briefly unavailable")


def test_an_approval_whose_label_cannot_be_booked_leaves_the_return_requested_and_approving_again_books_it(
    world, clock
):
    returns, store = returns_for(world, clock, ApprovalPolicy(), CarrierDownOnce())
    order = shipped(world, ("TSHIRT", 2))
    item = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")

    with pytest.raises(TransientError):
        returns.approve(item.id, "ok by Sam", actor="key_lead")
    assert store.get(item.id) == item

    approved = returns.approve(item.id, "ok by Sam", actor="key_lead")

    key = return_booking_key(item.id, "wh-west", [("L1", 1)], 200)
    assert (approved.status, approved.label_url) == (R.AUTHORIZED, f"labels/{order.id}/{key}")
    assert store.get(item.id) == approved and approved.version == item.version + 1
    authorized = [e for e in world.history(order.id) if e.type is OrderEvent.RETURN_AUTHORIZED]
    assert [e.detail["return_id"] for e in authorized] == [item.id]


def test_a_rejected_return_gives_its_units_back_to_be_returned_again(world, clock):
    returns, _ = returns_for(world, clock, ApprovalPolicy())
    order = shipped(world, ("TSHIRT", 1))
    item = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")

    assert returns.reject(item.id, "worn", actor="key_lead").status is R.REJECTED

    assert returns.request(order.id, ask(("L1", 1, None)), actor="key_cs").ordinal == 2
    events = [e.type for e in world.history(order.id) if e.type.value.startswith("return_")]
    assert events == [OrderEvent.RETURN_REQUESTED, OrderEvent.RETURN_REJECTED, OrderEvent.RETURN_REQUESTED]


class LambdaDied(Exception):
    """The function running a step was stopped (a timeout, a crash) at that point."""


def the_next_order_write_dies(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next FakeOrders.update never lands: the step's Lambda dies right before it."""
    real = world.orders.update
    died: list[bool] = []

    def update(order: Order, expected: Order, entries: list, **conditions) -> None:
        if not died:
            died.append(True)
            raise LambdaDied()
        real(order, expected, entries, **conditions)

    monkeypatch.setattr(world.orders, "update", update)


def return_entries(world: World, order_id: str) -> list[tuple[OrderEvent, str, str]]:
    return [(e.type, e.actor, e.detail["return_id"]) for e in world.history(order_id)
            if e.type.value.startswith("return_")]  # fmt: skip


# A person's decision on a return, and the order's history entry it writes.
DECISIONS = [("approve", OrderEvent.RETURN_AUTHORIZED), ("reject", OrderEvent.RETURN_REJECTED)]


def decided_and_died(
    world: World, clock: Clock, monkeypatch: pytest.MonkeyPatch, decision: str
) -> tuple[Returns, FakeReturns, Order, Return]:
    """A return requested on a shipped order whose `decision` ("approve" or "reject") by key_lead
    died after the return's write, before the order's entry: the returns, their store, the order
    and the return as requested."""
    returns, store = returns_for(world, clock, ApprovalPolicy())
    order = shipped(world, ("TSHIRT", 2))
    item = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")
    the_next_order_write_dies(world, monkeypatch)
    with pytest.raises(LambdaDied):
        getattr(returns, decision)(item.id, "ok by Sam", actor="key_lead")
    return returns, store, order, item


@pytest.mark.parametrize(("decision", "event"), DECISIONS)
def test_a_decision_that_died_before_the_orders_entry_has_it_written_once_by_deciding_again(
    world, clock, monkeypatch, decision, event
):
    returns, store, order, item = decided_and_died(world, clock, monkeypatch, decision)
    assert store.get(item.id).status is not R.REQUESTED

    for _ in range(2):  # the person sees the return decided (409), and the order's entry is there once
        with pytest.raises(InvalidTransition):
            getattr(returns, decision)(item.id, "ok by Sam", actor="key_lead")

    assert return_entries(world, order.id) == [
        (OrderEvent.RETURN_REQUESTED, "key_cs", item.id), (event, "key_lead", item.id)
    ]  # fmt: skip
    assert [e.detail.get("note") for e in world.history(order.id) if e.type is event] == ["ok by Sam"]


class RejectedWhileBooking:
    """A carrier slow to book a return label: a colleague rejects the return meanwhile (then the
    built-in carrier books it)."""

    def __init__(self) -> None:
        self.returns: Returns | None = None

    @hookimpl(tryfirst=True)
    def oms_carrier_return_label(self, return_id: str) -> None:
        assert self.returns is not None
        self.returns.reject(return_id, "worn", actor="key_colleague")


def test_an_approval_from_a_version_rejected_while_its_label_was_booked_authorizes_nothing(world, clock):
    slow = RejectedWhileBooking()
    returns, store = returns_for(world, clock, ApprovalPolicy(), slow)
    slow.returns = returns
    order = shipped(world, ("TSHIRT", 2))
    item = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")

    with pytest.raises(StaleVersion) as refused:
        returns.approve(item.id, "ok by Sam", actor="key_lead", expected_version=item.version)

    assert refused.value.details == [{"field": "If-Match", "message": f"current version is {item.version + 1}"}]
    assert (store.get(item.id).status, store.get(item.id).label_url) == (R.REJECTED, None)
    assert OrderEvent.RETURN_AUTHORIZED not in [e.type for e in world.history(order.id)]


def test_a_rejection_from_a_version_approved_before_its_write_rejects_nothing(world, clock, monkeypatch):
    returns, store = returns_for(world, clock, ApprovalPolicy())
    order = shipped(world, ("TSHIRT", 2))
    item = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")
    real, raced = store.update, []

    def update(new: Return, expected: Return) -> None:
        if not raced:  # the colleague's approval lands between the rejection's read and its write
            raced.append(True)
            monkeypatch.setattr(store, "update", real)
            returns.approve(item.id, "fine", actor="key_colleague")
        real(new, expected)

    monkeypatch.setattr(store, "update", update)

    with pytest.raises(StaleVersion):
        returns.reject(item.id, "worn", actor="key_lead", expected_version=item.version)

    assert (store.get(item.id).status, store.get(item.id).version) == (R.AUTHORIZED, item.version + 1)
    assert OrderEvent.RETURN_REJECTED not in [e.type for e in world.history(order.id)]


@pytest.mark.parametrize(("decision", "event"), DECISIONS)
def test_a_decision_from_a_stale_version_writes_nothing_not_even_the_entry_a_decision_that_died_owes(
    world, clock, monkeypatch, decision, event
):
    # The order's entry for the decision that died is the history's reader's to write (owed_entries).
    returns, store, order, item = decided_and_died(world, clock, monkeypatch, decision)
    decided, history = store.get(item.id), world.history(order.id)

    with pytest.raises(StaleVersion):
        getattr(returns, decision)(item.id, "from what I read", actor="key_other", expected_version=item.version)

    assert (store.get(item.id), world.history(order.id)) == (decided, history)
    returns.owed_entries(world.order(order.id))
    assert [e.actor for e in world.history(order.id) if e.type is event] == ["key_lead"]


def test_a_rejection_sent_again_from_the_version_it_made_is_told_it_is_decided_while_plain_reads_lag(
    world, clock, monkeypatch
):
    # A plain read a moment after the rejection still shows it requested, at the version before:
    # judged on it, the person's own version would be refused as changed since, naming an old one.
    returns, store = returns_for(world, clock, ApprovalPolicy())
    order = shipped(world, ("TSHIRT", 2))
    item = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")
    lagging_return_reads(store, monkeypatch)
    rejected = returns.reject(item.id, "worn", actor="key_lead", expected_version=item.version)

    with pytest.raises(InvalidTransition):
        returns.reject(item.id, "worn", actor="key_lead", expected_version=rejected.version)
    with pytest.raises(StaleVersion) as refused:
        returns.approve(item.id, None, actor="key_other", expected_version=item.version)

    assert refused.value.details == [{"field": "If-Match", "message": f"current version is {rejected.version}"}]
    assert store.get(item.id, consistent=True) == rejected


def test_a_request_that_died_before_the_orders_entry_has_it_written_before_the_receipt(world, clock, monkeypatch):
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 2))
    the_next_order_write_dies(world, monkeypatch)
    with pytest.raises(LambdaDied):
        returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")
    [item] = world.returns.for_order(order.id)
    assert return_entries(world, order.id) == []

    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    returns.restock(item.id)
    returns.record_on_order(item.id, actor="returns-workflow")
    returns.record_on_order(item.id, actor="returns-workflow")

    assert return_entries(world, order.id) == [
        (OrderEvent.RETURN_REQUESTED, "key_cs", item.id), (OrderEvent.RETURN_RECEIVED, "key_wh", item.id)
    ]  # fmt: skip


def test_a_request_that_died_before_the_orders_entry_has_it_written_by_its_approval_before_the_approvals(
    world, clock, monkeypatch
):
    returns, _ = returns_for(world, clock, ApprovalPolicy())
    order = shipped(world, ("TSHIRT", 2))
    the_next_order_write_dies(world, monkeypatch)
    with pytest.raises(LambdaDied):
        returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")
    [item] = world.returns.for_order(order.id)

    returns.approve(item.id, "ok by Sam", actor="key_lead")

    assert return_entries(world, order.id) == [
        (OrderEvent.RETURN_REQUESTED, "key_cs", item.id), (OrderEvent.RETURN_AUTHORIZED, "key_lead", item.id)
    ]  # fmt: skip


def test_a_request_retried_under_its_key_after_it_failed_past_the_return_answers_that_return(world, clock, monkeypatch):
    returns, store = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 3))
    the_next_order_write_dies(world, monkeypatch)
    with pytest.raises(LambdaDied):  # the return is stored; the request's answer never was
        returns.request(order.id, ask(("L1", 1, None)), actor="key_cs", request_key="api:key_cs:k1")

    again = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs", request_key="api:key_cs:k1")

    assert [r.id for r in store.for_order(order.id)] == [again.id]
    assert return_entries(world, order.id) == [(OrderEvent.RETURN_REQUESTED, "key_cs", again.id)]
    with pytest.raises(Conflict) as reused:
        returns.request(order.id, ask(("L1", 2, None)), actor="key_cs", request_key="api:key_cs:k1")
    assert reused.value.code == "idempotency_key_reused"
    other = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs", request_key="api:key_cs:k2")
    assert [r.id for r in store.for_order(order.id)] == [again.id, other.id]


def test_a_request_retried_under_its_key_with_another_reason_is_409_not_the_first_return(world, clock, monkeypatch):
    # The same key with another body is 409 (API.md): the reason is the customer's own words, and a
    # retry that changed them answered the first return with the first reason kept.
    returns, store = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 3))
    the_next_order_write_dies(world, monkeypatch)
    with pytest.raises(LambdaDied):  # the return is stored; the request's answer never was
        returns.request(order.id, ask(("L1", 1, "size_or_fit")), actor="key_cs", request_key="api:key_cs:k1")
    reworded = RequestReturn.model_validate(
        {"lines": [{"line_id": "L1", "quantity": 1, "reason": "too small after all", "reason_code": "size_or_fit"}]}
    )

    with pytest.raises(Conflict) as reused:
        returns.request(order.id, reworded, actor="key_cs", request_key="api:key_cs:k1")

    assert reused.value.code == "idempotency_key_reused"
    assert [line.reason for r in store.for_order(order.id) for line in r.lines] == ["customer says so"]


@pytest.mark.parametrize("units", [1, 2], ids=["same_body", "other_body"])
def test_a_request_under_a_key_used_more_than_24_hours_ago_makes_a_new_return(world, clock, units):
    # The key is honoured for 24 h (API.md): a storefront keying returns by order and line asks for
    # another unit days later and got the first return back (201) with nothing made, or a 409.
    returns, store = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 3))
    first = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs", request_key="api:key_cs:k1")
    clock.now += timedelta(hours=25)

    again = returns.request(order.id, ask(("L1", units, None)), actor="key_cs", request_key="api:key_cs:k1")

    assert again.id != first.id and again.ordinal == 2
    assert [r.id for r in store.for_order(order.id)] == [first.id, again.id]
    assert returns.request(order.id, ask(("L1", units, None)), actor="key_cs", request_key="api:key_cs:k1") == again


def test_the_history_read_writes_the_entries_a_dead_writer_owed_the_order_once(world, clock, monkeypatch):
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 2))
    the_next_order_write_dies(world, monkeypatch)
    with pytest.raises(LambdaDied):
        returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")
    [item] = world.returns.for_order(order.id)
    queries = OrderQueries(world.orders, owed_entries=returns.owed_entries)

    read = queries.history(order.id)
    again = queries.history(order.id)

    assert [(e.type, e.detail["return_id"]) for e in read if e.type is OrderEvent.RETURN_REQUESTED] == [
        (OrderEvent.RETURN_REQUESTED, item.id)
    ]  # fmt: skip
    assert again == read == world.history(order.id)
    assert return_entries(world, order.id) == [(OrderEvent.RETURN_REQUESTED, "key_cs", item.id)]


def test_a_history_page_shows_the_entries_a_dead_writer_owed_the_order_after_the_rest_and_writes_them(
    world, clock, monkeypatch
):
    # A page reads only the entries it shows (OrderRepository.history_range): those the returns
    # owed the order come after them, at their place, on the page that reaches the end.
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 2))
    queries = OrderQueries(world.orders, owed_entries=returns.owed_entries)
    stored = len(world.history(order.id))
    _, last = queries.history_page(order.id, None, stored - 1, None)
    the_next_order_write_dies(world, monkeypatch)
    with pytest.raises(LambdaDied):
        returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")

    entries, after = queries.history_page(order.id, None, 5, last)

    assert [e.type for e in entries] == [world.history(order.id)[stored - 1].type, OrderEvent.RETURN_REQUESTED]
    assert after is None and len(world.history(order.id)) == stored + 1
    walked, cursor = queries.history_page(order.id, None, 2, None)
    while cursor is not None:
        more, cursor = queries.history_page(order.id, None, 2, cursor)
        walked += more
    assert walked == world.history(order.id)


def test_receiving_restocks_resellable_units_only_and_the_order_is_partially_returned(world, clock):
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 3))
    before = world.level("TSHIRT", "wh-west")
    item = returns.request(order.id, ask(("L1", 2, "damaged")), actor="key_cs")

    received = returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable"), ("L1", 1, "damaged")), "key_wh")
    returns.restock(item.id)
    after = returns.record_on_order(item.id, actor="key_wh")

    line = received.lines[0]
    assert (received.status, line.received_quantity, line.resellable_quantity, line.condition) == (
        R.RECEIVED, 2, 1, "mixed"
    )  # fmt: skip
    assert world.level("TSHIRT", "wh-west") == (before[0] + 1, before[1], before[2] + 1)
    assert (after.status, after.lines[0].returned_quantity) == (S.PARTIALLY_RETURNED, 2)
    entry = world.history(order.id)[-1]
    assert (entry.type, entry.actor, entry.to_status) == (OrderEvent.RETURN_RECEIVED, "key_wh", S.PARTIALLY_RETURNED)
    assert entry.detail["restocked"] == [{"line_id": "L1", "quantity": 1}] and "not_restocked" not in entry.detail


def test_each_line_shows_the_condition_its_units_came_back_in_and_the_history_only_the_restocked(world, clock):
    # A line whose units all came back fit to sell shows `resellable`, one all damaged `damaged`
    # (API.md's Return line), and one nothing of which arrived no condition: `mixed` only for both.
    # The order's entry lists only the line put back on hand: none of the damaged MUGs was.
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 3), ("MUG", 2), ("CAP", 1))
    item = returns.request(order.id, ask(("L1", 1, None), ("L2", 2, None), ("L3", 1, None)), actor="key_cs")

    received = returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable"), ("L2", 2, "damaged")), "key_wh")
    returns.restock(item.id)
    returns.record_on_order(item.id, actor="returns-workflow")

    assert [(line.line_id, line.condition) for line in received.lines] == [
        ("L1", "resellable"), ("L2", "damaged"), ("L3", None)
    ]  # fmt: skip
    [entry] = [e for e in world.history(order.id) if e.type is OrderEvent.RETURN_RECEIVED]
    assert entry.detail["restocked"] == [{"line_id": "L1", "quantity": 1}]


def test_units_back_at_a_location_holding_the_most_it_may_are_not_restocked_and_the_order_says_so(world, clock):
    # The location counts 1,000,000,000 T-shirts (what a stock take may record at most): before, the
    # restock added the returned unit anyway and on_hand passed the cap that adjustments and
    # purchase-order receipts are refused at. Now the restock is refused as a whole (nothing added),
    # the return goes on (counted on the order, refunded), and the order's entry names the units
    # that did not go back on hand; the step run again changes nothing.
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 2))
    world.inventory.set_on_hand("TSHIRT", "wh-west", MAX_ON_HAND, "count")
    before = world.level("TSHIRT", "wh-west")
    item = returns.request(order.id, ask(("L1", 2, None)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable"), ("L1", 1, "damaged")), "key_wh")

    returns.restock(item.id)
    returns.restock(item.id)
    after = returns.record_on_order(item.id, actor="key_wh")
    refunded = returns.refund(item.id, actor="key_wh")

    assert world.level("TSHIRT", "wh-west") == before == (MAX_ON_HAND, 0, MAX_ON_HAND)
    assert (after.status, after.lines[0].returned_quantity) == (S.RETURNED, 2)
    entry = next(e for e in world.history(order.id) if e.type is OrderEvent.RETURN_RECEIVED)
    assert (entry.detail["restocked"], entry.detail["not_restocked"]) == (
        [], [{"line_id": "L1", "quantity": 1, "reason": "stock_limit_reached"}]
    )  # fmt: skip
    assert (refunded.status, refunded.refund) == (R.REFUNDED, after.lines[0].total)


def test_the_order_names_the_key_that_received_the_return_not_the_workflow_that_counted_it(world, clock):
    # The returns workflow counts the units on the order after the API recorded the receipt: the
    # order's history (and its access log) names who received them, as it names who shipped them.
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 1))
    item = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")

    returns.restock(item.id)
    returns.record_on_order(item.id, actor="returns-workflow")

    entry = world.history(order.id)[-1]
    assert (entry.type, entry.actor) == (OrderEvent.RETURN_RECEIVED, "key_wh")


def test_the_order_is_returned_once_every_shipped_unit_is_back(world, clock):
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 2))
    for quantity in (1, 1):
        item = returns.request(order.id, ask(("L1", quantity, None)), actor="key_cs")
        returns.receive(item.id, receipt("wh-west", ("L1", quantity, "resellable")), "key_wh")
        returns.restock(item.id)
        returns.record_on_order(item.id, actor="key_wh")

    assert world.order(order.id).status is S.RETURNED


def test_every_step_of_a_receipt_run_twice_changes_nothing(world, clock):
    returns, store = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 2))
    item = returns.request(order.id, ask(("L1", 2, None)), actor="key_cs")
    the_receipt = receipt("wh-west", ("L1", 2, "resellable"))
    returns.receive(item.id, the_receipt, "key_wh")
    returns.restock(item.id)
    returns.record_on_order(item.id, actor="key_wh")
    snapshot = (store.get(item.id), world.level("TSHIRT", "wh-west"), world.order(order.id), world.history(order.id))

    returns.receive(item.id, the_receipt, "key_wh")
    returns.restock(item.id)
    returns.record_on_order(item.id, actor="key_wh")

    assert (store.get(item.id), world.level("TSHIRT", "wh-west"), world.order(order.id), world.history(order.id)) == (
        snapshot
    )


def test_the_stuck_step_retried_after_its_write_records_the_return_stuck_once(world, clock):
    # Step Functions retries ReturnStuck when its answer is lost (a timeout after the write): the
    # order's history tells a person once that this execution stopped. Another execution that stops
    # (receiving the return again resumes it) is recorded too.
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 1))
    item = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")

    for _ in range(2):
        returns.stuck(item.id, "RuntimeError", "boom", actor="returns-workflow", execution=f"{item.id}-aaaa")
    returns.stuck(item.id, "RuntimeError", "boom", actor="returns-workflow", execution=f"{item.id}-bbbb")

    stuck = [e.detail for e in world.history(order.id) if e.type is OrderEvent.RETURN_STUCK]
    assert [(d["return_id"], d["error"], d["execution"]) for d in stuck] == [
        (item.id, "RuntimeError", f"{item.id}-aaaa"),
        (item.id, "RuntimeError", f"{item.id}-bbbb"),
    ]


def test_a_receipt_repeated_while_the_first_was_written_answers_the_received_return(world, clock, monkeypatch):
    returns, store = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 2))
    item = returns.request(order.id, ask(("L1", 2, None)), actor="key_cs")
    the_receipt = receipt("wh-west", ("L1", 2, "resellable"))
    first = returns.receive(item.id, the_receipt, "key_wh")
    # The repeat read the return before the first receipt was written (a scanner sending twice).
    stale_reads = iter([item])
    read = store.get
    monkeypatch.setattr(
        store,
        "get",
        lambda return_id, consistent=False: (None if consistent else next(stale_reads, None)) or read(return_id),
    )

    assert returns.receive(item.id, the_receipt, "key_wh") == first
    assert store.get(item.id) == first


@pytest.mark.parametrize("other", [
    receipt("wh-west", ("L1", 1, "resellable"), ("L1", 1, "damaged")),
    receipt("wh-west", ("L1", 1, "resellable")),
    receipt("wh-east", ("L1", 2, "resellable")),
], ids=["other_condition", "fewer_units", "other_location"])  # fmt: skip
def test_another_receipt_of_a_received_return_is_409_and_changes_nothing(world, clock, other):
    # A second scan that counted differently must not be answered as if it were recorded: the
    # first receipt was restocked and refunded, and the warehouse has to know this one was not.
    returns, store = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 2))
    item = returns.request(order.id, ask(("L1", 2, None)), actor="key_cs")
    the_receipt = receipt("wh-west", ("L1", 2, "resellable"))
    first = run_return_workflow(returns, returns.receive(item.id, the_receipt, "key_wh").id, actor="key_wh")

    with pytest.raises(InvalidTransition) as refused:
        returns.receive(item.id, other, "key_wh")

    assert refused.value.code == "invalid_transition"
    assert store.get(item.id) == first
    assert returns.receive(item.id, the_receipt, "key_other") == first


def test_the_same_receipt_listed_in_another_order_is_answered_as_the_first(world, clock):
    returns, store = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 2), ("MUG", 1))
    item = returns.request(order.id, ask(("L1", 2, None), ("L2", 1, None)), actor="key_cs")
    first = returns.receive(
        item.id, receipt("wh-west", ("L1", 1, "resellable"), ("L2", 1, "damaged"), ("L1", 1, "damaged")), "key_wh"
    )

    again = returns.receive(
        item.id, receipt("wh-west", ("L1", 1, "damaged"), ("L2", 1, "damaged"), ("L1", 1, "resellable")), "key_wh"
    )

    assert again == first == store.get(item.id)


def test_receiving_more_than_a_line_authorized_is_422_and_changes_nothing(world, clock):
    returns, store = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 3))
    item = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")

    with pytest.raises(InvalidRequest) as refused:
        returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable"), ("L1", 1, "damaged")), "key_wh")

    assert refused.value.details[0]["field"] == "lines[0].quantity"
    assert refused.value.message == "line L1 has 1 unit authorized, 2 received"  # was 'only 1 units were authorized'
    assert store.get(item.id) == item


def test_receiving_a_line_that_is_not_on_the_return_is_422_naming_its_line_id(world, clock):
    returns, store = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 1), ("MUG", 1))
    item = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")

    with pytest.raises(InvalidRequest) as refused:
        returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable"), ("L2", 1, "damaged")), "key_wh")

    assert refused.value.details == [{"field": "lines[1].line_id", "message": "is not on this return"}]
    assert store.get(item.id) == item


def test_a_receipt_at_an_unknown_location_is_422(world, clock):
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 1))
    item = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")

    with pytest.raises(InvalidRequest):
        returns.receive(item.id, receipt("nowhere", ("L1", 1, "resellable")), "key_wh")


def test_a_requested_return_cannot_be_received(world, clock):
    returns, _ = returns_for(world, clock, ApprovalPolicy())
    order = shipped(world, ("TSHIRT", 1))
    item = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")

    with pytest.raises(InvalidTransition):
        returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")


def test_another_channels_returns_answer_like_missing_ones(world, clock):
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 1))
    item = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")

    with pytest.raises(NotFound):
        returns.get(item.id, channel="other")
    with pytest.raises(NotFound):
        returns.request(order.id, ask(("L1", 1, None)), actor="key_cs", channel="other")
    with pytest.raises(NotFound):
        returns.for_order(order.id, channel="other")
    assert returns.list(None, "other", 10, None) == ([], None)
    assert returns.list(R.AUTHORIZED, order.channel, 10, None) == ([item], None)


# --- Exchanges ---------------------------------------------------------------------------------


def exchange_of(line_id: str, quantity: int, *wanted: tuple[str, int]) -> RequestReturn:
    return RequestReturn.model_validate(
        {"lines": [{"line_id": line_id, "quantity": quantity, "reason": "wrong size"}],
         "exchange": {"lines": [{"sku": sku, "quantity": q} for sku, q in wanted]}}
    )  # fmt: skip


def exchanged(world: World, clock: Clock, line: tuple[str, int], *wanted: tuple[str, int]):
    """An order of `line` shipped, its units returned for `wanted`, received resellable and
    settled: (returns, original order, settled return)."""
    returns, order, item = received_for_exchange(world, clock, line, *wanted)
    return returns, order, run_return_workflow(returns, item.id, actor="key_wh")


def received_for_exchange(
    world: World, clock: Clock, line: tuple[str, int], *wanted: tuple[str, int]
) -> tuple[Returns, Order, Return]:
    """An order of `line` shipped, its units returned for `wanted` and received resellable at
    wh-west, not yet settled: (returns, original order, the return as requested)."""
    returns, _ = returns_for(world, clock)
    order = shipped(world, line)
    item = returns.request(order.id, exchange_of("L1", line[1], *wanted), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", line[1], "resellable")), "key_wh")
    return returns, order, item


def test_an_exchange_that_costs_more_authorizes_only_the_difference_and_captures_it(world, clock):
    _, order, settled = exchanged(world, clock, ("TSHIRT", 1), ("TSHIRT", 1), ("CAP", 1))
    credit = order.lines[0].total

    replacement = world.order(settled.exchange_order_id or "")
    assert (settled.status, settled.refund) == (R.REFUNDED, Money.zero("USD"))
    assert replacement.external_id == f"{order.external_id}-x1"
    assert (replacement.channel, replacement.customer, replacement.shipping_address, replacement.payment.method) == (
        order.channel, order.customer, order.shipping_address, order.payment.method
    )  # fmt: skip
    assert (replacement.exchange_of, replacement.exchange_credit) == (settled.id, credit)
    assert world.order(order.id).payment.refunded == Money.zero("USD")  # the credit stays, paying for the new one
    # The original's history names the credit and that nothing came back at once (never a negative refund).
    [placed] = [entry for entry in world.history(order.id) if entry.type is OrderEvent.EXCHANGE_PLACED]
    assert (placed.detail["credit"], placed.detail["refund"]) == (
        credit.model_dump(mode="json"), Money.zero("USD").model_dump(mode="json")
    )  # fmt: skip

    allocated = world.run(replacement.id)
    due = replacement.totals.grand_total - credit
    assert due.amount > 0 and allocated.payment.authorized == due
    assert len(allocated.shipments) == 2  # TSHIRT from the west, CAP from the east: two captures
    for shipment in allocated.shipments:
        world.actions.ship(allocated.id, shipment.id, None, actor="key_wh")
    paid = world.order(replacement.id).payment
    assert (paid.status.value, paid.captured, paid.captured - paid.refunded) == ("captured", due, due)


def test_an_exchanges_credit_is_what_the_units_are_worth_once_a_pending_appeasement_is_refused(world, clock):
    # The credit is the returned units' refund: capped beside an appeasement still pending at the
    # gateway it would be nothing, and the replacement charged in full.
    gateway = ScriptedGateway()
    returns, _ = returns_for(world, clock, gateway)
    order = shipped(world, ("TSHIRT", 1))
    appeasement_left_pending(world, order)
    item = returns.request(order.id, exchange_of("L1", 1, ("TSHIRT", 1)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    gateway.script("refund", "refuse")

    settled = run_return_workflow(returns, item.id, actor="key_wh")

    replacement = world.order(settled.exchange_order_id or "")
    assert replacement.exchange_credit == order.lines[0].total
    assert [r.status for r in world.order(order.id).payment.refunds] == ["failed"]


def test_an_appeasement_after_an_exchange_cannot_take_what_its_credit_paid_the_replacement_with(world, clock):
    # The credit is the returned units' refund kept as captured on the original: refunding it by an
    # appeasement as well gave the customer that money back twice, once in the replacement's goods.
    _, order, settled = exchanged(world, clock, ("TSHIRT", 1), ("TSHIRT", 1), ("CAP", 1))
    credit = world.order(settled.exchange_order_id or "").exchange_credit
    assert credit == order.lines[0].total
    held = world.order(order.id)
    assert Order.model_validate_json(held.stored_json()).credit_holds == held.credit_holds == {settled.id: credit}
    assert "credit_holds" not in held.model_dump(mode="json")

    with pytest.raises(RefundExceedsCaptured):
        world.refunds.issue_refund(order.id, order.payment.captured, "goodwill", "appease-1", actor="key_cs")

    assert world.order(order.id).payment.refunds == []
    rest = world.refunds.issue_refund(order.id, order.payment.captured - credit, "goodwill", "appease-2", "key_cs")
    assert (rest.status, world.order(order.id).payment.refunded) == ("succeeded", order.payment.captured - credit)


def test_an_appeasement_landing_while_an_exchange_is_placed_leaves_its_credit_what_is_left(world, clock, monkeypatch):
    # The credit was priced on the original as read before the replacement was placed: an
    # appeasement that landed meanwhile was refunded beside a credit that no longer had the money.
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 1))
    item = returns.request(order.id, exchange_of("L1", 1, ("TSHIRT", 1), ("CAP", 1)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    returns.restock(item.id)
    returns.record_on_order(item.id, "key_wh")
    goodwill = order.payment.captured - Money(amount="1.00", currency="USD")
    appeased = []
    before_the_next_write(
        world, monkeypatch,
        lambda: appeased.append(world.refunds.issue_refund(order.id, goodwill, "goodwill", "appease-1", "key_cs")),
    )  # fmt: skip

    settled = returns.exchange(item.id, actor="key_wh")

    assert [refund.status for refund in appeased] == ["succeeded"]
    replacement = world.order(settled.exchange_order_id or "")
    original = world.order(order.id)
    assert replacement.exchange_credit == Money(amount="1.00", currency="USD")
    assert original.payment.refunded + replacement.exchange_credit == original.payment.captured
    assert world.run(replacement.id).payment.authorized == replacement.totals.grand_total - replacement.exchange_credit


def test_a_replacement_placed_before_credits_were_held_holds_its_credit_when_its_exchange_is_recorded(
    world, clock, monkeypatch
):
    # A step that placed the replacement under a version without holds, and died before recording
    # the exchange, finished under this one: the placed replacement was found and its credit never
    # held, so an appeasement could still refund everything captured.
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 1))
    item = returns.request(order.id, exchange_of("L1", 1, ("TSHIRT", 1), ("CAP", 1)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    returns.restock(item.id)
    returns.record_on_order(item.id, "key_wh")
    real = world.orders.update

    def dies_recording_the_exchange(new: Order, expected: Order, entries: list, **conditions: object) -> None:
        if any(entry.type is OrderEvent.EXCHANGE_PLACED for entry in entries):
            raise LambdaDied()
        real(new, expected, entries, **conditions)

    monkeypatch.setattr(world.orders, "update", dies_recording_the_exchange)
    with pytest.raises(LambdaDied):
        returns.exchange(item.id, actor="key_wh")
    monkeypatch.setattr(world.orders, "update", real)
    unheld = world.order(order.id)
    world.orders.orders[order.id] = unheld.model_copy(update={"credit_holds": {}})  # as the earlier version left it

    settled = returns.exchange(item.id, actor="key_wh")

    credit = world.order(settled.exchange_order_id or "").exchange_credit
    assert credit == order.lines[0].total and world.order(order.id).credit_holds == {item.id: credit}
    with pytest.raises(RefundExceedsCaptured):
        world.refunds.issue_refund(order.id, order.payment.captured, "goodwill", "appease-1", actor="key_cs")


class ExpressWhileOffered:
    """An express service the shop offers until it stops."""

    offered = True

    @hookimpl
    def oms_shipping_quotes(self, draft: PricingDraft) -> list[ShippingQuote]:
        return [ShippingQuote(method="courier", amount=Money.of("9.00", draft.currency))] if self.offered else []


def test_an_exchange_whose_shipping_method_ended_after_the_request_ships_the_shops_default_way(clock):
    courier = ExpressWhileOffered()
    world = build_world(STOCK, courier)
    returns, _ = returns_for(world, clock)
    order = world.allocated(("TSHIRT", 1), shipping_method="courier")
    for shipment in order.shipments:
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")
    item = returns.request(order.id, exchange_of("L1", 1, ("TSHIRT", 1)), actor="key_cs")
    courier.offered = False  # the shop stops offering it; the units come back anyway
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")

    settled = run_return_workflow(returns, item.id, actor="key_wh")

    replacement = world.order(settled.exchange_order_id or "")
    assert (replacement.shipping_method, replacement.exchange_of) == ("standard", item.id)
    assert settled.status is ReturnStatus.REFUNDED


def test_an_exchange_of_an_order_whose_shipping_method_ended_is_taken_and_ships_the_shops_default_way(clock):
    # The return request has no shipping method to change: refusing it (unknown_shipping_method)
    # left the customer no exchange at all, where the receipt would ship the replacement anyway.
    courier = ExpressWhileOffered()
    world = build_world(STOCK, courier)
    returns, _ = returns_for(world, clock)
    order = world.allocated(("TSHIRT", 1), shipping_method="courier")
    for shipment in order.shipments:
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")
    courier.offered = False

    item = returns.request(order.id, exchange_of("L1", 1, ("TSHIRT", 1)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    settled = run_return_workflow(returns, item.id, actor="key_wh")

    assert world.order(settled.exchange_order_id or "").shipping_method == "standard"


def test_an_exchange_that_costs_less_refunds_the_rest_once_and_authorizes_nothing(world, clock):
    _, order, settled = exchanged(world, clock, ("MUG", 2), ("CAP", 1))
    credit = order.lines[0].total
    replacement = world.order(settled.exchange_order_id or "")
    rest = credit - replacement.totals.grand_total

    assert rest.amount > 0 and settled.refund == rest
    original = world.order(order.id)
    assert [(r.return_id, r.amount, r.status) for r in original.payment.refunds] == [(settled.id, rest, "succeeded")]
    assert original.payment.refunded == rest
    allocated = world.run(replacement.id)
    assert allocated.payment.authorized == Money.zero("USD")
    for shipment in allocated.shipments:
        world.actions.ship(allocated.id, shipment.id, None, actor="key_wh")
    assert world.order(replacement.id).payment.captured == Money.zero("USD")


def test_a_cheaper_replacement_edited_to_cost_more_has_its_card_pay_the_increase_not_the_refunded_rest(world, clock):
    # The rest of the credit went back to the customer at once: an edit that makes the replacement
    # dearer is paid for by its card, and the credit it keeps pays only what it paid before.
    _, _, settled = exchanged(world, clock, ("MUG", 2), ("CAP", 1))
    placed = world.order(settled.exchange_order_id or "")
    edited = world.actions.edit(
        placed.id, placed.version, OrderEdit(lines=[LineInput(sku="CAP", quantity=3)]), "key_cs"
    )

    authorized = world.run(edited.id)

    assert authorized.totals.grand_total > placed.totals.grand_total
    assert authorized.payment.authorized == authorized.totals.grand_total - placed.totals.grand_total


def test_a_replacement_its_credit_paid_for_in_full_asks_the_gateway_nothing_shipped_or_cancelled(world, clock):
    # A gateway asked to authorize 0.00 may refuse it (Stripe's minimum is 0.50 USD): the
    # replacement ended payment_failed. It owes nothing, so no gateway is asked.
    _, _, settled = exchanged(world, clock, ("MUG", 2), ("CAP", 1))
    _, _, other = exchanged(world, clock, ("MUG", 1), ("CAP", 1))
    asked = list(world.spy.authorized)

    allocated = world.run(settled.exchange_order_id or "")
    kept = world.run(other.exchange_order_id or "")

    assert allocated.payment.authorization is None and allocated.payment.authorized == Money.zero("USD")
    assert (allocated.status, allocated.payment.status) == (S.ALLOCATED, "authorized")
    assert world.spy.authorized == asked
    done = delivered(world, allocated)
    assert (done.status, done.payment.status, done.payment.captured) == (S.DELIVERED, "captured", Money.zero("USD"))
    cancelled = world.actions.cancel(kept.id, "customer asked", actor="key_cs")
    assert (cancelled.status, cancelled.payment.status) == (S.CANCELLED, "voided")
    assert (world.spy.authorized, world.spy.voided) == (asked, [])


@pytest.mark.parametrize(("currency", "total", "credit", "payable"), [
    ("USD", "31.07", "21.59", "9.48"), ("USD", "12.00", "21.59", "0.00"), ("JPY", "3000", "2999", "1"),
    ("KWD", "10.125", "10.125", "0.000"),
])  # fmt: skip
def test_what_an_exchange_order_pays_is_its_total_less_the_credit_to_the_minor_unit(
    world, currency: str, total: str, credit: str, payable: str
):
    order = world.order(world.place(("TSHIRT", 1)))
    totals = order.totals.model_copy(update={"grand_total": Money(amount=total, currency=currency)})
    priced = order.model_copy(update={"currency": currency, "totals": totals})

    assert priced.payable() == Money(amount=total, currency=currency)
    exchange = priced.model_copy(update={"exchange_credit": Money(amount=credit, currency=currency)})
    assert exchange.payable() == Money(amount=payable, currency=currency)
    assert str(exchange.payable().amount) == payable


def test_settling_an_exchange_again_places_nothing_and_refunds_nothing_more(world, clock):
    returns, order, settled = exchanged(world, clock, ("MUG", 2), ("CAP", 1))
    orders_before = set(world.orders.orders)

    again = returns.exchange(settled.id, actor="key_wh")
    # A run that placed the replacement and crashed before recording it finds the order it placed.
    unrecorded = settled.model_copy(update={"status": R.RECEIVED, "exchange_order_id": None})
    returns._returns.returns[settled.id] = unrecorded
    resumed = returns.exchange(settled.id, actor="key_wh")

    assert again == settled
    assert resumed.exchange_order_id == settled.exchange_order_id and resumed.refund == settled.refund
    assert set(world.orders.orders) == orders_before
    assert len(world.order(order.id).payment.refunds) == 1
    placed = [e for e in world.history(order.id) if e.type is OrderEvent.EXCHANGE_PLACED]
    assert [(e.actor, e.detail["exchange_order_id"], e.detail["credit"]["amount"]) for e in placed] == [
        ("key_wh", settled.exchange_order_id, str(order.lines[0].total.amount))
    ]
    created = world.history(settled.exchange_order_id or "")[0]
    assert created.detail["exchange"] == {
        "order_id": order.id, "return_id": settled.id, "credit": order.lines[0].total.model_dump(mode="json")
    }  # fmt: skip


def test_a_cancelled_replacement_gives_its_credit_back_on_the_original_once(world, clock):
    _, order, settled = exchanged(world, clock, ("TSHIRT", 1), ("TSHIRT", 1), ("CAP", 1))
    credit = order.lines[0].total
    replacement = world.run(settled.exchange_order_id or "")
    assert replacement.status is S.ALLOCATED

    cancelled = world.actions.cancel(replacement.id, "changed my mind", actor="key_cs")
    world.actions.cancel(replacement.id, "changed my mind", actor="key_cs")  # a repeat gives nothing more

    assert cancelled.payment.status.value == "voided"  # what the replacement itself authorized
    original = world.order(order.id)
    assert [(r.kind, r.return_id, r.amount, r.status) for r in original.payment.refunds] == [
        ("return", settled.id, credit, "succeeded")
    ]
    assert original.payment.refunded == credit
    assert world.spy.refunded[-1][1] == credit
    assert original.returns_to_show == []  # shown, so the reconciler's kept-back pass has nothing to do


def test_a_refused_give_back_of_a_cancelled_replacements_credit_is_left_to_a_person_who_can_refund_it(world, clock):
    # The gateway refused the refund of the credit a cancelled replacement never used: nothing asks
    # it again, and the credit's hold kept that money from the appeasement a person made for it.
    _, order, settled = exchanged(world, clock, ("TSHIRT", 1), ("TSHIRT", 1), ("CAP", 1))
    credit = order.lines[0].total
    replacement = world.run(settled.exchange_order_id or "")
    world.gateway.script("refund", "refuse")
    world.actions.cancel(replacement.id, "changed my mind", actor="key_cs")
    world.gateway.script("refund", "approve")
    world.actions.cancel(replacement.id, "changed my mind", actor="key_cs")  # a repeat asks nothing again

    assert [(r.amount, r.status) for r in world.order(order.id).payment.refunds] == [(credit, "failed")]
    assert world.order(order.id).refundable() == order.payment.captured
    refund = world.refunds.issue_refund(order.id, credit, "the exchange's credit", "appease-1", actor="key_cs")
    assert refund.status == "succeeded"
    assert world.order(order.id).payment.refunded == credit


def test_a_cheaper_replacement_cancelled_gives_back_what_of_the_credit_it_took(world, clock):
    # The exchange refunded the credit beyond the replacement's total; the rest paid for it.
    _, order, settled = exchanged(world, clock, ("MUG", 2), ("CAP", 1))
    credit = order.lines[0].total

    world.actions.cancel(settled.exchange_order_id or "", "not wanted", actor="key_cs")

    original = world.order(order.id)
    assert [r.amount for r in original.payment.refunds] == [settled.refund, credit - settled.refund]
    assert original.payment.refunded == credit


def exchanged_with_the_replacement_cancelled_as_placed(
    world: World, clock: Clock, monkeypatch: pytest.MonkeyPatch, refund: str
) -> tuple[Order, Return]:
    """Two MUGs shipped, returned for a CAP and received resellable, then exchanged with the
    gateway answering `refund` to refunds, while the customer cancels the cheaper replacement the
    moment it is placed: after the write holding the credit, the one before the replacement is
    placed. (original order, settled return)."""
    returns, order, item = received_for_exchange(world, clock, ("MUG", 2), ("CAP", 1))
    returns.restock(item.id)
    returns.record_on_order(item.id, "key_wh")
    world.gateway.script("refund", refund)

    def cancel_the_replacement() -> None:
        (replacement,) = [o for o in world.orders.orders.values() if o.exchange_of == item.id]
        world.actions.cancel(replacement.id, "not wanted", actor="key_cs")

    before_the_next_write(world, monkeypatch, cancel_the_replacement, skip=1)
    return order, returns.exchange(item.id, actor="key_wh")


def test_a_replacement_cancelled_before_the_exchange_refunded_the_rest_is_refunded_the_credit_once(
    world, clock, monkeypatch
):
    # The customer cancelled the cheaper replacement the moment it was placed; its cancel began
    # refunding the whole credit, which the gateway had not done yet. The exchange's refund of the
    # credit beyond the replacement's total then had nothing left to refund.
    order, settled = exchanged_with_the_replacement_cancelled_as_placed(world, clock, monkeypatch, "transient")
    world.gateway.script("refund", "approve")
    world.refunds.finish_pending(order.id, "key_cs")

    credit = order.lines[0].total
    original = world.order(order.id)
    assert [(r.amount, r.status) for r in original.payment.refunds] == [(credit, "succeeded")]
    assert original.payment.refunded == credit
    assert settled.status is R.REFUNDED and settled.exchange_order_id


def test_a_cheaper_replacement_cancelled_before_its_rest_was_refunded_whose_give_back_is_refused_leaves_it_all(
    world, clock, monkeypatch
):
    # As above, but the gateway refused the give-back of the whole credit: it is left to a person,
    # who is told the whole credit was not given back. The exchange's refund of the credit beyond the
    # replacement's total then refunded 13.48 of it all the same, and the person could not refund
    # the 26.81 they were told of (only 18.33 was left), nor tell what of it the customer had.
    order, settled = exchanged_with_the_replacement_cancelled_as_placed(world, clock, monkeypatch, "refuse")

    credit = order.lines[0].total
    original = world.order(order.id)
    assert [(r.amount, r.status) for r in original.payment.refunds] == [(credit, "failed")]
    assert (settled.status, settled.refund) == (R.REFUNDED, Money.zero("USD"))
    assert original.refundable() == original.payment.captured
    world.gateway.script("refund", "approve")
    appeased = world.refunds.issue_refund(order.id, credit, "the exchange's credit", "appease-1", actor="key_cs")
    assert (appeased.status, world.order(order.id).payment.refunded) == ("succeeded", credit)


def test_a_replacement_whose_units_are_cancelled_below_its_credit_gives_back_what_it_does_not_use(world, clock):
    # Only once nothing is left to ship: until then an edit could make it dearer again, and its
    # payment counts on the whole credit.
    _, order, settled = exchanged(world, clock, ("TSHIRT", 1), ("TSHIRT", 1), ("CAP", 1))
    credit = order.lines[0].total
    replacement = world.run(settled.exchange_order_id or "")

    left = world.actions.cancel(replacement.id, "just the cap", actor="key_cs", lines={"L1": 1})
    assert left.totals.grand_total < credit
    assert world.order(order.id).payment.refunds == []
    for shipment in left.shipments:
        if shipment.status == "pending":  # the t-shirt's parcel, emptied, is cancelled
            world.actions.ship(replacement.id, shipment.id, None, actor="key_wh")
            world.actions.ship(replacement.id, shipment.id, None, actor="key_wh")  # a repeat gives nothing more

    original = world.order(order.id)
    assert [(r.amount, r.status) for r in original.payment.refunds] == [(credit - left.totals.grand_total, "succeeded")]
    paid = world.order(replacement.id).payment
    assert paid.captured == Money.zero("USD") and paid.authorized == paid.captured


def test_a_replacement_pickup_that_loses_units_while_ready_gives_back_its_unused_credit_once_collected(clock):
    # A pickup waiting at its store can still lose units, so its total is not final: the credit it
    # does not use is given back when it is collected, whole, not in part after the first cancel
    # (the give-back is made once, under one key, and would miss what later cancels freed).
    world = build_world([*STOCK, ("TSHIRT", "store-sf", 10)])
    returns, _ = returns_for(world, clock)
    pickup = {"fulfillment": {"type": "pickup", "location_id": "store-sf"}}
    original = world.allocated(("TSHIRT", 3), **pickup)
    world.actions.ready(original.id, original.shipments[0].id, actor="key_store")
    world.actions.collect(original.id, original.shipments[0].id, actor="key_store")
    item = returns.request(original.id, exchange_of("L1", 3, ("TSHIRT", 3)), actor="key_cs")
    returns.receive(item.id, receipt("store-sf", ("L1", 3, "resellable")), "key_store")
    settled = run_return_workflow(returns, item.id, actor="key_store")
    replacement = world.run(settled.exchange_order_id or "")
    (shipment,) = replacement.shipments
    world.actions.ready(replacement.id, shipment.id, actor="key_store")

    world.actions.cancel(replacement.id, "two fewer", actor="key_cs", lines={"L1": 1})
    left = world.actions.cancel(replacement.id, "two fewer", actor="key_cs", lines={"L1": 1})
    assert world.order(original.id).payment.refunds == []
    world.actions.collect(replacement.id, shipment.id, actor="key_store")

    credit = replacement.exchange_credit
    assert credit is not None and left.totals.grand_total < credit
    refunds = world.order(original.id).payment.refunds
    assert [(r.amount, r.status) for r in refunds] == [(credit - left.totals.grand_total, "succeeded")]
    assert world.order(replacement.id).payment.captured == Money.zero("USD")


def test_a_replacement_edited_below_its_credit_gives_back_what_it_does_not_use_once_shipped(world, clock):
    _, order, settled = exchanged(world, clock, ("TSHIRT", 1), ("TSHIRT", 1), ("CAP", 1))
    credit = order.lines[0].total
    placed = world.order(settled.exchange_order_id or "")

    edited = world.actions.edit(
        placed.id, placed.version, OrderEdit(lines=[LineInput(sku="CAP", quantity=1)]), "key_cs"
    )
    allocated = world.run(edited.id)
    assert world.order(order.id).payment.refunds == []
    for shipment in allocated.shipments:
        world.actions.ship(allocated.id, shipment.id, None, actor="key_wh")

    assert edited.totals.grand_total < credit
    refunds = world.order(order.id).payment.refunds
    assert [(r.amount, r.status) for r in refunds] == [(credit - edited.totals.grand_total, "succeeded")]


def test_a_replacement_whose_difference_is_declined_gives_its_credit_back(world, clock):
    _, order, settled = exchanged(world, clock, ("TSHIRT", 1), ("TSHIRT", 1), ("CAP", 1))
    replacement_id = settled.exchange_order_id or ""
    world.gateway.script("refund", "transient", "transient", "transient", "approve")

    with pytest.raises(TransientError):  # the gateway cannot refund yet: the step runs again
        world.workflow.fail_payment(replacement_id, "PaymentDeclined", "card declined")
    world.workflow.fail_payment(replacement_id, "PaymentDeclined", "card declined")

    assert world.order(replacement_id).status is S.PAYMENT_FAILED
    original = world.order(order.id)
    assert [(r.amount, r.status) for r in original.payment.refunds] == [(order.lines[0].total, "succeeded")]


def test_a_return_of_the_replacement_refunds_what_it_paid_and_the_credit_that_paid_for_the_rest(world, clock):
    # The T-shirt's credit paid for most of the T-shirt and cap; the customer paid the difference.
    # Sending both back must give back both: the difference on the replacement, the credit on the
    # original, where it stayed captured.
    returns, order, settled = exchanged(world, clock, ("TSHIRT", 1), ("TSHIRT", 1), ("CAP", 1))
    credit = order.lines[0].total
    replacement = world.run(settled.exchange_order_id or "")
    for shipment in replacement.shipments:
        world.actions.ship(replacement.id, shipment.id, None, actor="key_wh")
        world.actions.deliver(replacement.id, shipment.id, actor="key_wh")
    paid = world.order(replacement.id).payment.captured
    back = returns.request(replacement.id, ask(("L1", 1, "wrong_item"), ("L2", 1, "wrong_item")), actor="key_cs")
    returns.receive(back.id, receipt("wh-west", ("L1", 1, "resellable"), ("L2", 1, "resellable")), "key_wh")

    done = run_return_workflow(returns, back.id, actor="key_wh")
    again = run_return_workflow(returns, back.id, actor="key_wh")

    assert done.status is R.REFUNDED and again == done
    assert done.refund == replacement.totals.grand_total == paid + credit
    assert world.order(replacement.id).payment.refunded == paid
    original = world.order(order.id)
    assert [(r.return_id, r.amount, r.status) for r in original.payment.refunds] == [(settled.id, credit, "succeeded")]


def test_a_return_of_a_replacement_whose_payment_an_appeasement_gave_back_draws_no_more_than_the_credit(world, clock):
    # The customer paid the difference on the replacement and a person gave it back as goodwill;
    # then every unit came back. Its captures have nothing left to refund, and the credit refunds
    # what it paid for, no more: the rest of the original's money (its other T-shirt) stays.
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 2))
    item = returns.request(order.id, exchange_of("L1", 1, ("TSHIRT", 1), ("CAP", 1)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    replacement = delivered(
        world, world.run(run_return_workflow(returns, item.id, actor="key_wh").exchange_order_id or "")
    )
    credit, paid = replacement.exchange_credit, replacement.payment.captured
    world.refunds.issue_refund(replacement.id, paid, "goodwill", "appease-1", actor="key_cs")
    back = returns.request(replacement.id, ask(("L1", 1, "wrong_item"), ("L2", 1, "wrong_item")), actor="key_cs")
    returns.receive(back.id, receipt("wh-west", ("L1", 1, "resellable"), ("L2", 1, "resellable")), "key_wh")

    done = run_return_workflow(returns, back.id, actor="key_wh")

    assert credit is not None and done.refund == credit
    assert world.order(order.id).payment.refunded == credit
    assert world.order(replacement.id).payment.refunded == paid  # the appeasement alone


def test_a_replacements_units_exchanged_for_what_is_sold_out_are_refunded_as_a_return_of_them(world, clock):
    # As the test above, but the customer asked for a cap instead and none was left: refunded
    # exactly as a plain return of the replacement's units (its captures, then the credit).
    returns, order, settled = exchanged(world, clock, ("TSHIRT", 1), ("TSHIRT", 1), ("CAP", 1))
    credit = order.lines[0].total
    replacement = delivered(world, world.run(settled.exchange_order_id or ""))
    paid = replacement.payment.captured
    out_of(world, "CAP", "wh-east")
    back = returns.request(
        replacement.id,
        RequestReturn.model_validate({
            "lines": [{"line_id": lid, "quantity": 1, "reason": "not mine", "reason_code": "wrong_item"}
                      for lid in ("L1", "L2")],
            "exchange": {"lines": [{"sku": "CAP", "quantity": 1}]},
        }),
        actor="key_cs",
    )  # fmt: skip
    # The cap that comes back is torn: nothing to exchange it for.
    returns.receive(back.id, receipt("wh-west", ("L1", 1, "resellable"), ("L2", 1, "damaged")), "key_wh")

    done = run_return_workflow(returns, back.id, actor="key_wh")

    assert (done.status, done.exchange_not_placed, done.exchange_order_id) == (R.REFUNDED, "insufficient_stock", None)
    assert done.refund == replacement.totals.grand_total == paid + credit
    assert world.order(replacement.id).payment.refunded == paid
    original = world.order(order.id)
    assert [(r.return_id, r.amount, r.status) for r in original.payment.refunds] == [(settled.id, credit, "succeeded")]


def test_a_replacements_units_returned_one_by_one_draw_on_the_credit_until_it_is_spent(world, clock):
    returns, order, settled = exchanged(world, clock, ("MUG", 1), ("TSHIRT", 2))
    credit = order.lines[0].total
    replacement = world.run(settled.exchange_order_id or "")
    for shipment in replacement.shipments:
        world.actions.ship(replacement.id, shipment.id, None, actor="key_wh")
    paid = world.order(replacement.id).payment.captured
    refunds = []
    for _ in range(2):
        back = returns.request(replacement.id, ask(("L1", 1, None)), actor="key_cs")
        returns.receive(back.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
        refunds.append(run_return_workflow(returns, back.id, actor="key_wh").refund)

    line = world.order(replacement.id).lines[0]
    assert sum(refunds[1:], refunds[0]) == line.total
    assert world.order(replacement.id).payment.refunded + world.order(order.id).payment.refunded == line.total
    assert world.order(order.id).payment.refunded <= credit and world.order(replacement.id).payment.refunded <= paid


def test_a_replacements_second_parcel_ships_after_the_first_ones_units_came_back(world, clock):
    # The credit paid for most of the mug and cap; the mug's parcel left first and captured all the
    # customer owed. The mug came back and that capture was refunded whole (payment `refunded`):
    # the cap's parcel, with nothing left to capture, must still leave (it was 409 for good).
    returns, order, settled = exchanged(world, clock, ("TSHIRT", 1), ("MUG", 1), ("CAP", 1))
    replacement = world.run(settled.exchange_order_id or "")
    mug, cap = (next(s for s in replacement.shipments if s.location_id == loc) for loc in ("wh-west", "wh-east"))
    world.actions.ship(replacement.id, mug.id, None, actor="key_wh")
    assert world.order(replacement.id).payment.captured == replacement.payable()
    back = returns.request(replacement.id, ask(("L1", 1, "size_or_fit")), actor="key_cs")
    returns.receive(back.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    run_return_workflow(returns, back.id, actor="key_wh")
    assert world.order(replacement.id).payment.status == "refunded"

    shipped_cap = world.actions.ship(replacement.id, cap.id, None, actor="key_wh")

    assert shipped_cap.status is S.PARTIALLY_RETURNED
    assert [s.status.value for s in shipped_cap.shipments] == ["shipped", "shipped"]
    paid = shipped_cap.payment
    assert (paid.status, paid.captured, paid.refunded) == ("refunded", replacement.payable(), replacement.payable())
    # In all, the customer paid for the cap and both orders' shipping: the T-shirt and mug came back.
    original = world.order(order.id).payment
    cap_total = next(line.total for line in shipped_cap.lines if line.sku == "CAP")
    kept = cap_total + shipped_cap.totals.shipping + order.totals.shipping
    assert original.captured - original.refunded + paid.captured - paid.refunded == kept


@pytest.mark.parametrize("line", [("TSHIRT", 3), ("TSHIRT", 1)], ids=["cheaper", "dearer"])
def test_the_credit_of_a_replacements_units_cancelled_after_another_parcel_came_back_is_given_back(world, clock, line):
    # The mug's parcel left and came back while the cap's waited (the mug's refund drew on the credit
    # what its own captures did not cover); then the cap was cancelled. The credit that was to pay
    # for the cap stayed captured on the original: the mug's share was counted as used twice.
    returns, order, settled = exchanged(world, clock, line, ("MUG", 1), ("CAP", 1))
    replacement = world.run(settled.exchange_order_id or "")
    mug = next(s for s in replacement.shipments if s.location_id == "wh-west")
    world.actions.ship(replacement.id, mug.id, None, actor="key_wh")
    back = returns.request(replacement.id, ask(("L1", 1, "size_or_fit")), actor="key_cs")
    returns.receive(back.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    run_return_workflow(returns, back.id, actor="key_wh")

    world.actions.cancel(replacement.id, "no cap after all", actor="key_cs")
    world.actions.cancel(replacement.id, "no cap after all", actor="key_cs")  # a repeat gives nothing more

    cancelled = world.order(replacement.id)
    assert cancelled.status is S.RETURNED
    original, own = world.order(order.id).payment, cancelled.payment
    # Everything the customer got came back or was cancelled: they paid both orders' shipping, no more.
    paid = original.captured - original.refunded + own.captured - own.refunded
    assert paid == order.totals.shipping + cancelled.totals.shipping
    given_back = [r for r in original.refunds if "did not use its credit" in r.reason]
    assert [r.status for r in given_back] == ["succeeded"]


def mug_of_replacement_back(world: World, clock: Clock, line: tuple[str, int]):
    """`line` exchanged for a MUG (the west's parcel) and a CAP (the east's); the replacement's MUG
    shipped and is back, received and counted, not yet refunded: (returns, original, settled
    exchange, replacement, the MUG's return id)."""
    returns, order, settled = exchanged(world, clock, line, ("MUG", 1), ("CAP", 1))
    replacement = world.run(settled.exchange_order_id or "")
    mug = next(s for s in replacement.shipments if s.location_id == "wh-west")
    world.actions.ship(replacement.id, mug.id, None, actor="key_wh")
    back = returns.request(replacement.id, ask(("L1", 1, "size_or_fit")), actor="key_cs")
    returns.receive(back.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    returns.restock(back.id)
    returns.record_on_order(back.id, "key_wh")
    return returns, order, settled, world.order(replacement.id), back.id


def paid_both_shippings_and_credit_held(world: World, order: Order, settled: Return, replacement: Order) -> None:
    """Everything the customer got came back or was cancelled: across both orders they paid both
    orders' shipping and no more, and the refunds drawn on the credit add up to no more than it."""
    original, own = world.order(order.id).payment, world.order(replacement.id).payment
    paid = original.captured - original.refunded + own.captured - own.refunded
    assert paid == order.totals.shipping + world.order(replacement.id).totals.shipping
    drawn = [r.amount for r in original.refunds if r.return_id == settled.id and r.status == "succeeded"]
    assert sum(drawn, Money.zero("USD")) <= (replacement.exchange_credit or Money.zero("USD"))


@pytest.mark.parametrize("line", [("TSHIRT", 3), ("TSHIRT", 1)], ids=["cheaper", "dearer"])
def test_a_replacements_credit_given_back_again_or_twice_at_once_is_given_back_once(world, clock, line, monkeypatch):
    returns, order, settled, replacement, back = mug_of_replacement_back(world, clock, line)
    run_return_workflow(returns, back, actor="key_wh")
    stale = world.order(replacement.id)
    world.actions.cancel(replacement.id, "no cap after all", actor="key_cs")
    cancelled = world.order(replacement.id)

    credits = ExchangeCredits(world.returns, world.refunds, world.orders)
    before_the_next_write(world, monkeypatch, lambda: credits.give_back(cancelled, "key_cs"))
    credits.give_back(cancelled, "key_cs")
    monkeypatch.undo()
    credits.give_back(stale, "key_cs")  # one that read the replacement before the cancel: not final

    paid_both_shippings_and_credit_held(world, order, settled, replacement)
    given_back = [r for r in world.order(order.id).payment.refunds if "did not use its credit" in r.reason]
    assert [r.status for r in given_back] == ["succeeded"]


@pytest.mark.parametrize("line", [("TSHIRT", 3), ("TSHIRT", 1)], ids=["cheaper", "dearer"])
@pytest.mark.parametrize("cancel_first", [True, False], ids=["cancel_then_refund", "cancel_during_refund"])
def test_a_replacements_rest_cancelled_before_or_while_its_returned_parcel_is_refunded_draws_the_credit_once(
    world, clock, line, cancel_first, monkeypatch
):  # fmt: skip
    returns, order, settled, replacement, back = mug_of_replacement_back(world, clock, line)
    cancel = lambda: world.actions.cancel(replacement.id, "no cap after all", actor="key_cs")  # noqa: E731
    if cancel_first:
        cancel()
    landed = [True] if cancel_first else before_the_next_write(world, monkeypatch, cancel)  # in the refund's write

    run_return_workflow(returns, back, actor="key_wh")
    monkeypatch.undo()
    assert landed
    cancel()  # a repeat finishes what the one in between left, and gives nothing more

    assert world.order(replacement.id).status is S.RETURNED
    paid_both_shippings_and_credit_held(world, order, settled, replacement)


def test_a_replacements_units_sent_back_one_by_one_give_back_its_line_to_the_cent(world, clock):
    # The credit paid for all three caps, so the first cap's refund came wholly from it and the
    # replacement recorded nothing for it; the second was exchanged, the third returned. The first
    # was valued as if it had come back last, and the third gave back a cent short of the line.
    returns, _, settled = exchanged(world, clock, ("TSHIRT", 3), ("CAP", 3))
    replacement = delivered(world, world.run(settled.exchange_order_id or ""))
    assert replacement.payment.captured == Money.zero("USD")
    given = []
    for request in (ask(("L1", 1, None)), exchange_of("L1", 1, ("CAP", 1)), ask(("L1", 1, None))):
        back = returns.request(replacement.id, request, actor="key_cs")
        returns.receive(back.id, receipt("wh-east", ("L1", 1, "resellable")), "key_wh")
        done = run_return_workflow(returns, back.id, actor="key_wh")
        given.append(world.order(done.exchange_order_id).exchange_credit if done.exchange_order_id else done.refund)

    assert [money.amount for money in given] == [Decimal("8.33"), Decimal("8.34"), Decimal("8.33")]
    assert sum(given[1:], given[0]) == replacement.lines[0].total


def test_a_replacements_return_refunded_from_the_credit_alone_is_counted_once_when_its_refund_is_retried(world, clock):
    # Two T-shirts exchanged for two caps and a T-shirt: the credit pays for the caps' parcel, which
    # left first and captured nothing. A cap came back and its refund drew on the credit, which the
    # gateway refused; by the retry the T-shirt's parcel had captured the rest. The first run had
    # recorded the cap as refunded from the credit, the retry's own refund recorded it again: the
    # second cap's refund then counted three caps of two and failed for good, never refunded.
    gateway = ScriptedGateway()
    returns, _ = returns_for(world, clock, gateway)
    order = shipped(world, ("TSHIRT", 2))
    item = returns.request(order.id, exchange_of("L1", 2, ("CAP", 2), ("TSHIRT", 1)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 2, "resellable")), "key_wh")
    replacement = world.run(run_return_workflow(returns, item.id, actor="key_wh").exchange_order_id or "")
    caps = world.shipment_at(replacement, "wh-east")
    assert replacement.capture_due(caps) == Money.zero("USD")
    world.actions.ship(replacement.id, caps, None, actor="key_wh")
    first = returns.request(replacement.id, ask(("L1", 1, None)), actor="key_cs")
    returns.receive(first.id, receipt("wh-east", ("L1", 1, "resellable")), "key_wh")
    gateway.script("refund", "refuse")
    assert run_return_workflow(returns, first.id, actor="key_wh").status is R.RECEIVED
    gateway.script("refund", "approve")
    world.actions.ship(replacement.id, world.shipment_at(replacement, "wh-west"), None, actor="key_wh")
    assert run_return_workflow(returns, first.id, actor="key_wh").status is R.REFUNDED

    second = returns.request(replacement.id, ask(("L1", 1, None)), actor="key_cs")
    returns.receive(second.id, receipt("wh-east", ("L1", 1, "resellable")), "key_wh")
    done = run_return_workflow(returns, second.id, actor="key_wh")

    assert done.status is R.REFUNDED
    assert sum((r.refund for r in (world.returns.get(first.id), done)), Money.zero("USD")) == (
        world.order(replacement.id).lines[0].total
    )
    # In all, the customer paid for the T-shirt kept and both orders' shipping.
    paid = [world.order(order.id).payment, world.order(replacement.id).payment]
    kept = replacement.lines[1].total + order.totals.shipping + replacement.totals.shipping
    assert sum((p.captured - p.refunded for p in paid), Money.zero("USD")) == kept


def delivered(world: World, order: Order) -> Order:
    """`order` with every shipment shipped and delivered."""
    for shipment in order.shipments:
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")
        world.actions.deliver(order.id, shipment.id, actor="key_wh")
    return world.order(order.id)


def exchanged_again(world: World, clock: Clock, *wanted: tuple[str, int]):
    """A T-shirt exchanged for the same T-shirt (replacement B: the first credit pays for it, the
    customer the shipping), B delivered, then B's T-shirt exchanged for `wanted` and settled:
    (returns, original A, B, the second return settled)."""
    returns, order, first = exchanged(world, clock, ("TSHIRT", 1), ("TSHIRT", 1))
    b = delivered(world, world.run(first.exchange_order_id or ""))
    item = returns.request(b.id, exchange_of("L1", 1, *wanted), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    return returns, order, b, run_return_workflow(returns, item.id, actor="key_wh")


def refunded_across(world: World, *orders: Order) -> Money:
    return sum((world.order(o.id).payment.refunded for o in orders[1:]), world.order(orders[0].id).payment.refunded)


def test_a_replacement_exchanged_again_takes_the_whole_value_of_its_units_as_credit(world, clock):
    # B's own captures paid only its shipping: the T-shirt was paid by A's credit, which stays
    # captured on A. Swapping B's T-shirt again must carry that value over, not charge it twice.
    _, a, b, second = exchanged_again(world, clock, ("TSHIRT", 1))
    c = world.order(second.exchange_order_id or "")

    assert b.payment.captured < b.lines[0].total  # B paid less than its T-shirt is worth
    assert c.exchange_credit == b.lines[0].total
    allocated = world.run(c.id)
    assert allocated.payment.authorized == c.totals.grand_total - b.lines[0].total  # the shipping only
    assert refunded_across(world, a, b) == Money.zero("USD")  # the credit pays for C: nothing refunded


def test_a_second_replacement_cancelled_gives_back_its_whole_credit_from_both_earlier_orders_once(world, clock):
    _, a, b, second = exchanged_again(world, clock, ("TSHIRT", 1))
    c = world.run(second.exchange_order_id or "")

    world.actions.cancel(c.id, "changed my mind", actor="key_cs")
    world.actions.cancel(c.id, "changed my mind", actor="key_cs")  # a repeat gives nothing more

    assert refunded_across(world, a, b) == b.lines[0].total
    assert world.order(b.id).payment.refunded == b.payment.captured  # B's own captures first
    assert world.order(a.id).payment.refunded == b.lines[0].total - b.payment.captured  # then A's credit


def test_a_cheaper_second_replacement_refunds_the_rest_of_the_whole_credit(world, clock):
    _, a, b, second = exchanged_again(world, clock, ("CAP", 1))
    c = world.order(second.exchange_order_id or "")
    rest = b.lines[0].total - c.totals.grand_total

    assert rest.amount > 0 and second.refund == rest
    assert refunded_across(world, a, b) == rest
    assert world.run(c.id).payment.authorized == Money.zero("USD")


def test_a_cheaper_second_replacement_cancelled_gives_back_only_what_the_rest_left_of_its_credit(world, clock):
    # The rest was refunded partly on B and partly from A's credit: the give-back counts both.
    _, a, b, second = exchanged_again(world, clock, ("CAP", 1))
    c = world.run(second.exchange_order_id or "")

    world.actions.cancel(c.id, "not wanted", actor="key_cs")
    world.actions.cancel(c.id, "not wanted", actor="key_cs")

    assert refunded_across(world, a, b) == b.lines[0].total
    assert world.order(b.id).payment.refunded == b.payment.captured


def test_a_cheaper_second_replacement_cancelled_shows_its_whole_credit_given_back_up_the_chain(world, clock):
    # B's T-shirt (21.44) exchanged for a CAP: the rest (8.11) came back at once, 5.00 from B's own
    # captures and 3.11 from A's credit; C cancelled, its 13.33 came back from A's credit. All of it
    # went back to the customer, as a first exchange's return shows it, but the return showed 8.11:
    # the give-back showed only what went back on B.
    returns, a, b, second = exchanged_again(world, clock, ("CAP", 1))
    c = world.run(second.exchange_order_id or "")

    world.actions.cancel(c.id, "not wanted", actor="key_cs")

    assert refunded_across(world, a, b) == b.lines[0].total
    assert returns.get(second.id).refund == b.lines[0].total


def test_a_cheaper_second_replacement_cancelled_before_its_rest_was_refunded_shows_its_whole_credit_given_back(
    world, clock, monkeypatch
):
    # C cancelled the moment it was placed: its give-back (5.00 from B's captures, 16.44 from A's
    # credit) found the return received, and the exchange's step then had nothing left to refund.
    # The return it marked refunded showed the 5.00 that went back on B.
    returns, a, first = exchanged(world, clock, ("TSHIRT", 1), ("TSHIRT", 1))
    b = delivered(world, world.run(first.exchange_order_id or ""))
    item = returns.request(b.id, exchange_of("L1", 1, ("CAP", 1)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    returns.restock(item.id)
    returns.record_on_order(item.id, "key_wh")

    def cancel_the_replacement() -> None:
        (c,) = [o for o in world.orders.orders.values() if o.exchange_of == item.id]
        world.actions.cancel(c.id, "not wanted", actor="key_cs")

    # After the write holding the credit, the one before the replacement is placed.
    before_the_next_write(world, monkeypatch, cancel_the_replacement, skip=1)
    settled = returns.exchange(item.id, actor="key_wh")

    assert refunded_across(world, a, b) == b.lines[0].total
    assert (settled.status, settled.refund) == (R.REFUNDED, b.lines[0].total)


def b_received_for_exchange(world: World, clock: Clock, gateway: ScriptedGateway, *wanted: tuple[str, int]):
    """As exchanged_again, the refunds of the returns through `gateway`, but B's T-shirt only
    received for `wanted`, not settled: (returns, A, B, the second return)."""
    returns, _ = returns_for(world, clock, gateway)
    world.inventory.set_on_hand("PEN", "wh-west", 5, reason="count")
    a = shipped(world, ("TSHIRT", 1))
    first = returns.request(a.id, exchange_of("L1", 1, ("TSHIRT", 1)), actor="key_cs")
    returns.receive(first.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    b = delivered(world, world.run(run_return_workflow(returns, first.id, actor="key_wh").exchange_order_id or ""))
    second = returns.request(b.id, exchange_of("L1", 1, *wanted), actor="key_cs")
    returns.receive(second.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    return returns, a, b, second


def test_a_cheaper_second_replacement_cancelled_after_its_rest_was_refused_once_up_the_chain_gives_back_the_rest(
    world, clock
):  # fmt: skip
    # The rest's draw on A's credit was refused, then made under the next key: only the one made
    # took from the credit, so the pen's give-back is the credit less the rest, not less it twice.
    gateway = ScriptedGateway()
    returns, a, b, second = b_received_for_exchange(world, clock, gateway, ("PEN", 1))
    gateway.script("refund", "approve", "refuse", "approve")  # B's own captures, then A's credit twice
    # The step fails, and is retried.
    assert run_return_workflow(returns, second.id, actor="key_wh").status is R.RECEIVED
    c = world.run(run_return_workflow(returns, second.id, actor="key_wh").exchange_order_id or "")
    assert [r.status for r in world.order(a.id).payment.refunds] == ["failed", "succeeded"]

    world.actions.cancel(c.id, "not wanted", actor="key_cs")

    assert refunded_across(world, a, b) == b.lines[0].total == c.exchange_credit
    assert world.order(b.id).payment.refunded == b.payment.captured


def test_a_cheaper_second_replacements_rest_is_drawn_up_the_chain_only_once_its_own_part_is_made(world, clock):
    # B's refund of the rest is still pending at the gateway: A's credit is not drawn on beside it
    # (were B's refused, the draw would have been decided on money that never went back).
    gateway = ScriptedGateway()
    returns, a, b, second = b_received_for_exchange(world, clock, gateway, ("PEN", 1))
    gateway.script("refund", "transient")

    assert run_return_workflow(returns, second.id, actor="key_wh").status is R.RECEIVED

    assert [r.status for r in world.order(b.id).payment.refunds] == ["pending"]
    assert world.order(a.id).payment.refunds == []
    gateway.script("refund", "approve")
    world.refunds.finish_pending(b.id, "key_cs")
    settled = run_return_workflow(returns, second.id, actor="key_wh")
    c = world.order(settled.exchange_order_id or "")
    assert settled.refund == refunded_across(world, a, b) == c.exchange_credit - c.totals.grand_total


def test_a_second_replacements_return_whose_draw_up_the_chain_is_refused_is_not_marked_refunded(world, clock):
    # C's T-shirt came back: C's captures, then B's credit (B's captures), then A's credit refund
    # it. The gateway refused A's part: the return stays received for the retry, showing nothing
    # the gateway did not give.
    gateway = ScriptedGateway()
    returns, a, _, second = b_received_for_exchange(world, clock, gateway, ("TSHIRT", 1))
    c = delivered(world, world.run(run_return_workflow(returns, second.id, actor="key_wh").exchange_order_id or ""))
    back = returns.request(c.id, ask(("L1", 1, "size_or_fit")), actor="key_cs")
    returns.receive(back.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    gateway.script("refund", "approve", "approve", "refuse", "approve")  # C's, B's, then A's twice

    refused = run_return_workflow(returns, back.id, actor="key_wh")

    assert (refused.status, refused.refund) == (R.RECEIVED, Money.zero("USD"))
    assert [r.status for r in world.order(a.id).payment.refunds] == ["failed"]
    done = run_return_workflow(returns, back.id, actor="key_wh")
    assert (done.status, done.refund) == (R.REFUNDED, c.lines[0].total)


def test_a_replacement_whose_shipped_units_were_exchanged_again_gives_back_the_credit_of_its_cancelled_rest(
    world, clock
):  # fmt: skip
    # Two T-shirts for a T-shirt and a cap (B, paid by the credit alone). B's T-shirt left first and
    # was swapped for a pen: the rest beyond the pen came from B's credit, on A. Then B's cap was
    # cancelled: the credit that was to pay for it goes back too, the T-shirt's draw not counted
    # as used twice. The customer pays the three orders' shipping and the pen.
    world.inventory.set_on_hand("PEN", "wh-west", 5, reason="count")
    returns, a, first = exchanged(world, clock, ("TSHIRT", 2), ("TSHIRT", 1), ("CAP", 1))
    b = world.run(first.exchange_order_id or "")
    world.actions.ship(b.id, world.shipment_at(b, "wh-west"), None, actor="key_wh")
    world.actions.deliver(b.id, world.shipment_at(b, "wh-west"), actor="key_wh")
    item = returns.request(b.id, exchange_of("L1", 1, ("PEN", 1)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    c = world.run(run_return_workflow(returns, item.id, actor="key_wh").exchange_order_id or "")
    assert world.order(b.id).payment.captured == Money.zero("USD")

    world.actions.cancel(b.id, "no cap after all", actor="key_cs")
    c = delivered(world, c)

    b = world.order(b.id)
    paid = [world.order(o.id).payment.captured - world.order(o.id).payment.refunded for o in (a, b, c)]
    assert sum(paid, Money.zero("USD")) == a.totals.shipping + b.totals.shipping + c.totals.grand_total
    # A's credit less what B kept of it, and B's T-shirt less the pen it paid for.
    unused = a.lines[0].total - b.totals.grand_total + b.lines[0].total - c.totals.grand_total
    assert refunded_across(world, a, b) == unused


def test_a_second_replacements_rest_cancelled_after_its_first_parcel_came_back_gives_back_the_credit_up_the_chain(
    world, clock
):  # fmt: skip
    # C (a T-shirt and a cap for B's T-shirt) sent its T-shirt back while the cap waited: its refund
    # took C's captures, then B's, then drew on A's credit. The cap was then cancelled: the credit
    # its T-shirt's draws took, on B and on A, is not counted as used by the cap too. The customer
    # kept nothing and pays the three orders' shipping.
    returns, a, b, second = exchanged_again(world, clock, ("TSHIRT", 1), ("CAP", 1))
    c = world.run(second.exchange_order_id or "")
    world.actions.ship(c.id, world.shipment_at(c, "wh-west"), None, actor="key_wh")
    world.actions.deliver(c.id, world.shipment_at(c, "wh-west"), actor="key_wh")
    back = returns.request(c.id, ask(("L1", 1, None)), actor="key_cs")
    returns.receive(back.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    assert run_return_workflow(returns, back.id, actor="key_wh").refund == c.lines[0].total

    world.actions.cancel(c.id, "no cap after all", actor="key_cs")
    world.actions.cancel(c.id, "no cap after all", actor="key_cs")  # a repeat gives nothing more

    paid = [world.order(o.id).payment.captured - world.order(o.id).payment.refunded for o in (a, b, c)]
    assert sum(paid, Money.zero("USD")) == a.totals.shipping + b.totals.shipping + c.totals.shipping


def test_a_replacement_exchanged_again_holds_only_its_own_captures_and_the_earlier_order_the_rest(world, clock):
    # B's T-shirt was paid by A's credit, its cap and shipping by its own captures. Exchanged again,
    # B's credit holds what B captured (its own money, taken first) and the rest is carried from
    # A's credit, which A still holds: nothing is held twice, so A's own shipping stays refundable.
    returns, a, first = exchanged(world, clock, ("TSHIRT", 1), ("TSHIRT", 1), ("CAP", 1))
    b = delivered(world, world.run(first.exchange_order_id or ""))
    tshirt = next(line for line in b.lines if line.sku == "TSHIRT")
    item = returns.request(b.id, exchange_of(tshirt.line_id, 1, ("TSHIRT", 1)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", (tshirt.line_id, 1, "resellable")), "key_wh")

    c = world.order(run_return_workflow(returns, item.id, actor="key_wh").exchange_order_id or "")

    assert c.exchange_credit == tshirt.total and b.payment.captured < tshirt.total
    assert world.order(b.id).credit_holds == {item.id: b.payment.captured}
    assert world.order(a.id).credit_holds == {first.id: a.lines[0].total}
    assert (world.order(a.id).refundable(), world.order(b.id).refundable()) == (a.totals.shipping, Money.zero("USD"))


def test_a_third_replacement_cancelled_gives_back_its_credit_from_every_earlier_order(world, clock):
    returns, a, b, second = exchanged_again(world, clock, ("TSHIRT", 1))
    c = delivered(world, world.run(second.exchange_order_id or ""))
    item = returns.request(c.id, exchange_of("L1", 1, ("TSHIRT", 1)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    d = world.run(run_return_workflow(returns, item.id, actor="key_wh").exchange_order_id or "")
    assert d.exchange_credit == b.lines[0].total and d.payment.authorized == d.totals.grand_total - d.exchange_credit

    world.actions.cancel(d.id, "changed my mind", actor="key_cs")
    world.actions.cancel(d.id, "changed my mind", actor="key_cs")

    assert refunded_across(world, a, b, c) == b.lines[0].total


def test_a_cheaper_third_replacement_cancelled_gives_back_only_what_the_rest_left_of_its_credit(world, clock):
    # The rest beyond the pen was refunded on C, then carried to B's credit and on to A's: the
    # give-back counts what every earlier order gave of it, however far up the chain.
    world.inventory.set_on_hand("PEN", "wh-west", 5, reason="count")
    returns, a, b, second = exchanged_again(world, clock, ("TSHIRT", 1))
    c = delivered(world, world.run(second.exchange_order_id or ""))
    item = returns.request(c.id, exchange_of("L1", 1, ("PEN", 1)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    third = run_return_workflow(returns, item.id, actor="key_wh")
    d = world.run(third.exchange_order_id or "")
    assert third.refund == d.exchange_credit - d.totals.grand_total
    assert [r.status for r in world.order(a.id).payment.refunds] == ["succeeded"]  # carried two orders up

    world.actions.cancel(d.id, "not wanted", actor="key_cs")
    world.actions.cancel(d.id, "not wanted", actor="key_cs")

    assert refunded_across(world, a, b, c) == b.lines[0].total == d.exchange_credit
    assert world.order(c.id).payment.refunded == c.payment.captured  # C's own captures first
    assert world.order(b.id).payment.refunded == b.payment.captured  # then B's


def test_a_second_replacement_sent_back_refunds_its_value_from_the_earlier_orders(world, clock):
    returns, a, b, second = exchanged_again(world, clock, ("TSHIRT", 1))
    c = delivered(world, world.run(second.exchange_order_id or ""))
    paid = world.order(c.id).payment.captured
    back = returns.request(c.id, ask(("L1", 1, "wrong_item")), actor="key_cs")
    returns.receive(back.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")

    done = run_return_workflow(returns, back.id, actor="key_wh")
    again = run_return_workflow(returns, back.id, actor="key_wh")

    assert done.status is R.REFUNDED and again == done
    # The whole order came back, so the built-in policy refunds its shipping too (as for one exchange).
    assert done.refund == c.totals.grand_total == paid + c.exchange_credit
    assert refunded_across(world, a, b, c) == c.totals.grand_total
    assert world.order(c.id).payment.refunded == paid
    assert world.order(b.id).payment.refunded == b.payment.captured  # then B's own captures
    assert world.order(a.id).payment.refunded == b.lines[0].total - b.payment.captured  # then A's credit


def test_an_order_that_is_no_replacement_is_cancelled_without_a_refund(world):
    order = world.allocated(("TSHIRT", 1))

    assert world.actions.cancel(order.id, "no", actor="key_cs").payment.refunds == []


def test_originals_whose_long_external_ids_share_their_first_characters_each_get_their_replacement(world, clock):
    # external_id is at most 128 characters: one too long to carry "-x1" whole was cut to its first
    # 125, so two originals of a channel sharing them named one replacement and the second
    # customer's exchange was given up (exchange_external_id_taken), refunded instead.
    returns, _ = returns_for(world, clock)
    settled = []
    for last in "AB":
        order = world.order(world.allocated(("MUG", 1), external_id="E" * 127 + last).id)
        for shipment in order.shipments:
            world.actions.ship(order.id, shipment.id, None, actor="key_wh")
        item = returns.request(order.id, exchange_of("L1", 1, ("CAP", 1)), actor="key_cs")
        returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
        settled.append((order, run_return_workflow(returns, item.id, actor="key_wh")))

    assert [item.exchange_not_placed for _, item in settled] == [None, None]
    replacements = [world.order(item.exchange_order_id or "") for _, item in settled]
    assert [r.exchange_of for r in replacements] == [item.id for _, item in settled]
    ids = [r.external_id or "" for r in replacements]
    assert len(set(ids)) == 2 and all(len(i) <= 128 and i.endswith("-x1") for i in ids)
    assert all(i.startswith("E" * 100) for i in ids)


def test_a_replacement_an_earlier_version_placed_under_a_long_external_ids_cut_form_is_found_not_placed_again(
    world, clock, monkeypatch
):
    # A run of the version that cut a long external_id placed the replacement, then died before the
    # return recorded it: the run after the deploy, naming it otherwise, finds that one.
    import core.returns

    returns, _ = returns_for(world, clock)
    order = world.order(world.allocated(("MUG", 1), external_id="E" * 128).id)
    for shipment in order.shipments:
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")
    item = returns.request(order.id, exchange_of("L1", 1, ("CAP", 1)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    real_place = world.capture.place_exchange
    placed: list[Order] = []

    def place_then_die(*args, **kwargs) -> Order:
        placed.append(real_place(*args, **kwargs))
        raise TimeoutError("the function was killed after the put")

    with monkeypatch.context() as earlier_version:
        earlier_version.setattr(core.returns, "_replacement_external_id", core.returns._cut_replacement_external_id)
        earlier_version.setattr(world.capture, "place_exchange", place_then_die)
        with pytest.raises(TimeoutError):
            run_return_workflow(returns, item.id, actor="key_wh")
    assert placed and placed[0].external_id == "E" * 125 + "-x1"

    settled = run_return_workflow(returns, item.id, actor="key_wh")

    assert (settled.exchange_order_id, settled.exchange_not_placed) == (placed[0].id, None)
    renamed = core.returns._replacement_external_id(settled, order)
    assert renamed != placed[0].external_id
    assert world.orders.get(order_id_for(order.channel, renamed)) is None


def test_an_order_the_channel_placed_under_the_replacements_external_id_is_not_taken_for_it(world, clock):
    # No replacement can ever be placed under that id (nor found again under another): the
    # exchange is given up and the mugs refunded, rather than the return stuck for good.
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("MUG", 2))
    item = returns.request(order.id, exchange_of("L1", 2, ("CAP", 1)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 2, "resellable")), "key_wh")
    own = world.order(world.place(("CAP", 1), external_id=f"{order.external_id}-x1"))

    settled = returns.exchange(item.id, actor="key_wh")

    assert (settled.status, settled.exchange_order_id) == (R.REFUNDED, None)
    assert settled.exchange_not_placed == ExchangeIdTaken.code
    assert [(r.return_id, r.amount) for r in world.order(order.id).payment.refunds] == [(item.id, order.lines[0].total)]
    assert world.order(own.id) == own  # the channel's own order is not touched


def out_of(world: World, sku: str, location_id: str) -> None:
    """Every unit of `sku` at `location_id` gone (sold elsewhere, found damaged) before the receipt."""
    on_hand = world.level(sku, location_id)[0]
    world.inventory.adjust(sku, location_id, -on_hand, reason="sold elsewhere")


def test_an_exchange_is_not_given_up_for_stock_a_plain_read_does_not_show_yet(world, clock, monkeypatch):
    # Given up for want of stock, an exchange is given up for good: its units are refunded instead.
    # That is decided on stock as written, never on a plain read (BatchGetItem is eventually
    # consistent) that does not show yet the caps that arrived a moment before.
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 1))
    item = returns.request(order.id, exchange_of("L1", 1, ("CAP", 1)), actor="key_cs")
    out_of(world, "CAP", "wh-east")
    before = {lvl.location_id: lvl for lvl in world.inventory.levels({"CAP"})["CAP"]}  # what a plain read shows
    world.inventory.adjust("CAP", "wh-east", 3, reason="delivery")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    real = world.inventory.levels

    def lagging(skus, location_ids=None, *, consistent=False):
        levels = real(skus, location_ids)
        if consistent:
            return levels
        return {sku: [before.get(lvl.location_id, lvl) if sku == "CAP" else lvl for lvl in found]
                for sku, found in levels.items()}  # fmt: skip

    monkeypatch.setattr(world.inventory, "levels", lagging)
    settled = run_return_workflow(returns, item.id, actor="key_wh")

    assert settled.exchange_not_placed is None and settled.exchange_order_id is not None
    assert [line.sku for line in world.order(settled.exchange_order_id).lines] == ["CAP"]


def test_an_exchange_with_no_stock_for_its_replacement_is_refunded_instead(world, clock):
    # The customer sent the T-shirt back for a cap; by the time it arrived no cap was left (and caps
    # may not wait for stock): the replacement cannot be placed, so the T-shirt is refunded.
    returns, store = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 1))
    item = returns.request(order.id, exchange_of("L1", 1, ("CAP", 1)), actor="key_cs")
    out_of(world, "CAP", "wh-east")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    placed = set(world.orders.orders)

    settled = run_return_workflow(returns, item.id, actor="key_wh")

    assert (settled.status, settled.refund, settled.exchange_order_id) == (R.REFUNDED, order.lines[0].total, None)
    assert settled.exchange_not_placed == "insufficient_stock" and store.get(item.id) == settled
    assert set(world.orders.orders) == placed  # no replacement
    payment = world.order(order.id).payment
    assert [(r.return_id, r.status, r.amount) for r in payment.refunds] == [
        (item.id, "succeeded", order.lines[0].total)
    ]
    assert "exchange not placed" in payment.refunds[0].reason
    (entry,) = [e for e in world.history(order.id) if e.type is OrderEvent.EXCHANGE_NOT_PLACED]
    assert (entry.actor, entry.detail["return_id"], entry.detail["code"]) == ("key_wh", item.id, "insufficient_stock")
    assert entry.detail["details"] == [
        {"field": "exchange.lines[0].quantity", "message": "0 of CAP available, 1 ordered"}
    ]
    # Settled again (a retried step, a second receipt): nothing more is placed, refunded or written.
    assert run_return_workflow(returns, item.id, actor="key_wh") == settled
    assert returns.exchange(item.id, actor="key_wh") == settled
    assert world.order(order.id).payment.refunds == payment.refunds
    assert len([e for e in world.history(order.id) if e.type is OrderEvent.EXCHANGE_NOT_PLACED]) == 1


def test_an_exchange_given_up_never_takes_a_replacement_nor_one_placed_is_given_up(world, clock):
    # A concurrent run that placed a replacement after the exchange was given up fails (for a
    # person) rather than settle the return both ways; and a placed exchange is never given up.
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 1))
    item = returns.request(order.id, exchange_of("L1", 1, ("CAP", 1)), actor="key_cs")
    received = returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")

    given_up = received.without_exchange("insufficient_stock", at=clock.now)
    placed = received.with_exchange_order("ord_x", at=clock.now)

    with pytest.raises(InvalidTransition):
        given_up.with_exchange_order("ord_x", at=clock.now)
    with pytest.raises(InvalidTransition):
        given_up.placing_exchange(at=clock.now)  # a run that checked after the give-up places nothing
    with pytest.raises(InvalidTransition):
        placed.without_exchange("insufficient_stock", at=clock.now)
    with pytest.raises(InvalidTransition):
        item.without_exchange("insufficient_stock", at=clock.now)  # not received


def test_an_exchange_for_a_product_that_may_wait_for_stock_is_placed_and_waits_backordered(world, clock):
    returns, _ = returns_for(world, clock)
    world.catalog.put_product(product("HOODIE", "29.00", allow_backorder=True))
    order = shipped(world, ("TSHIRT", 1))
    item = returns.request(order.id, exchange_of("L1", 1, ("HOODIE", 1)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")

    settled = run_return_workflow(returns, item.id, actor="key_wh")

    assert (settled.status, settled.exchange_not_placed) == (R.REFUNDED, None)
    replacement_id = settled.exchange_order_id or ""
    world.workflow.authorize_payment(replacement_id, attempt=0)
    with pytest.raises(Backordered):
        world.workflow.reserve_stock(replacement_id)
    replacement = world.order(replacement_id)
    assert replacement.status is S.BACKORDERED and replacement.exchange_credit == order.lines[0].total
    assert world.order(order.id).payment.refunds == []  # the credit stays, paying for the hoodie


def test_an_exchange_refunded_instead_is_decided_once_though_its_refund_is_refused_and_stock_arrives(world, clock):
    # The refund the gateway refused is asked again; the cap that arrived meanwhile does not turn
    # the return back into an exchange (the customer was told it is refunded).
    gateway = ScriptedGateway()
    returns, _ = returns_for(world, clock, gateway)
    order = shipped(world, ("TSHIRT", 1))
    item = returns.request(order.id, exchange_of("L1", 1, ("CAP", 1)), actor="key_cs")
    out_of(world, "CAP", "wh-east")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    gateway.script("refund", "refuse")

    with pytest.raises(RefundNotDone):
        returns.exchange(item.id, actor="key_wh")
    assert returns.get(item.id).status is R.RECEIVED
    world.inventory.adjust("CAP", "wh-east", 5, reason="delivery")
    gateway.script("refund", "approve")
    placed = set(world.orders.orders)

    settled = returns.exchange(item.id, actor="key_wh")

    assert (settled.status, settled.refund, settled.exchange_order_id) == (R.REFUNDED, order.lines[0].total, None)
    assert set(world.orders.orders) == placed
    assert [r.status for r in world.order(order.id).payment.refunds] == ["failed", "succeeded"]


def test_an_exchange_refunded_instead_releases_the_shipping_its_credit_claimed(world, clock):
    # Both shirts came back damaged, one for a cap and one for money: the exchange's credit claimed
    # the shipping, then no cap was left. Its refund was refused (asked again later): the other
    # return, which brings the order's last unit back too, gets the shipping meanwhile, and the
    # exchange's refund, once it goes through, does not give it again.
    gateway = ScriptedGateway()
    returns, _ = returns_for(world, clock, gateway)
    order = shipped(world, ("TSHIRT", 2))
    swap = returns.request(order.id, damaged_exchange_of("L1", 1, ("CAP", 1)), actor="key_cs")
    plain = returns.request(order.id, ask(("L1", 1, "damaged")), actor="key_cs")
    for each in (swap, plain):
        returns.receive(each.id, receipt("wh-west", ("L1", 1, "damaged")), "key_wh")
    out_of(world, "CAP", "wh-east")
    gateway.script("refund", "refuse")
    assert run_return_workflow(returns, swap.id, actor="key_wh").status is R.RECEIVED
    assert world.order(order.id).shipping_claims == {}
    gateway.script("refund", "approve")

    paid = run_return_workflow(returns, plain.id, actor="key_wh")
    swapped = run_return_workflow(returns, swap.id, actor="key_wh")

    assert paid.refund == refunded_units(order, 1) + order.totals.shipping
    assert swapped.refund == order.lines[0].total - refunded_units(order, 1)
    assert world.order(order.id).payment.refunded == order.totals.grand_total


def given_up_and_refunded(world: World, returns: Returns, item_id: str, order: Order, code: str) -> None:
    """The return settled as a plain return of its units: refunded, its exchange given up for
    `code` with one `exchange_not_placed` entry on the order, no replacement placed."""
    placed = set(world.orders.orders)

    settled = run_return_workflow(returns, item_id, actor="key_wh")

    assert (settled.status, settled.exchange_order_id, settled.exchange_not_placed) == (R.REFUNDED, None, code)
    assert settled.refund == order.lines[0].total
    assert set(world.orders.orders) == placed
    refunds = world.order(order.id).payment.refunds
    assert [(r.return_id, r.status, r.amount) for r in refunds] == [(item_id, "succeeded", order.lines[0].total)]
    (entry,) = [e for e in world.history(order.id) if e.type is OrderEvent.EXCHANGE_NOT_PLACED]
    assert (entry.detail["return_id"], entry.detail["code"]) == (item_id, code)
    assert not [e for e in world.history(order.id) if e.type is OrderEvent.RETURN_STUCK]
    assert returns.exchange(item_id, actor="key_wh") == settled  # a retried step changes nothing


def test_an_exchange_whose_product_lost_its_price_in_the_orders_currency_is_refunded_instead(world, clock):
    # The cap was priced in dollars when the return was accepted; by the time the T-shirt came back
    # the shop sold it in euros only: no replacement can be priced, so the T-shirt is refunded.
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 1))
    item = returns.request(order.id, exchange_of("L1", 1, ("CAP", 1)), actor="key_cs")
    world.catalog.put_product(product("CAP", "7.77", currency="EUR", weight_grams=90))
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")

    given_up_and_refunded(world, returns, item.id, order, "no_price")
    (entry,) = [e for e in world.history(order.id) if e.type is OrderEvent.EXCHANGE_NOT_PLACED]
    assert entry.detail["details"] == [{"field": "exchange.lines[0].sku", "message": "no price in USD"}]


def test_an_exchange_whose_product_was_repriced_past_what_an_order_records_is_refunded_instead(world, clock):
    # The hoodie was 29.00 when the return was accepted; by the time the T-shirt came back the
    # shop had priced it (a slip of the keyboard) so that the replacement's total reaches 10^15:
    # no replacement can be placed, whatever is retried, so the T-shirt is refunded. It was
    # retried until a person looked.
    world.catalog.put_product(product("HOODIE", "29.00", allow_backorder=True))
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 1))
    item = returns.request(order.id, exchange_of("L1", 1, ("HOODIE", 10)), actor="key_cs")
    world.catalog.put_product(product("HOODIE", "99999999999999.00", allow_backorder=True))
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")

    given_up_and_refunded(world, returns, item.id, order, "amount_too_large")


class RetiredWallet:
    """The `wallet` payment method (the test gateway behind it), which the shop stops offering for
    new orders (`offered`): the orders paid with it are still captured and refunded."""

    def __init__(self) -> None:
        self.offered = True

    @hookimpl
    def oms_payment_methods(self) -> list[str] | None:
        return ["wallet"] if self.offered else None

    @hookimpl
    def oms_payment_authorize(self, method: str, token: str, amount: Money, idempotency_key: str, attempt: int):
        if method == "wallet":
            return test_payments.oms_payment_authorize("test", token, amount, idempotency_key, attempt)
        return None

    @hookimpl
    def oms_payment_find_authorization(self, method: str, idempotency_key: str):
        return test_payments.oms_payment_find_authorization("test", idempotency_key) if method == "wallet" else None

    @hookimpl
    def oms_payment_capture(self, method: str, authorization: str, amount: Money, idempotency_key: str):
        if method == "wallet":
            return test_payments.oms_payment_capture("test", authorization, amount, idempotency_key)
        return None

    @hookimpl
    def oms_payment_refund(self, method: str, authorization: str, amount: Money, idempotency_key: str):
        if method == "wallet":
            return test_payments.oms_payment_refund("test", authorization, amount, idempotency_key)
        return None


def shipped_with_wallet(world: World) -> Order:
    order = world.allocated(("TSHIRT", 1), payment={"method": "wallet", "token": "tok_approve"})
    for shipment in order.shipments:
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")
    return world.order(order.id)


def test_an_exchange_whose_payment_method_is_no_longer_taken_is_refunded_instead(clock):
    # The replacement would be paid like the original, with a method the shop no longer takes for
    # new orders: capture refuses it (unknown_payment_method) however often it is asked.
    wallet = RetiredWallet()
    world = build_world(STOCK, wallet)
    returns, _ = returns_for(world, clock, wallet)
    order = shipped_with_wallet(world)
    item = returns.request(order.id, exchange_of("L1", 1, ("CAP", 1)), actor="key_cs")
    wallet.offered = False
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")

    given_up_and_refunded(world, returns, item.id, order, "unknown_payment_method")


class SwissPost:
    """The one shipping service quoting orders in francs, until the shop stops shipping them."""

    offered = True

    @hookimpl
    def oms_shipping_quotes(self, draft: PricingDraft) -> list[ShippingQuote] | None:
        if not self.offered or draft.currency != "CHF":
            return None
        return [ShippingQuote(method="post", amount=Money.of("9.00", draft.currency))]


def test_an_exchange_no_shipping_service_quotes_any_more_is_refunded_instead(clock):
    post = SwissPost()
    world = build_world([*STOCK, ("SCARF", "wh-west", 5), ("GLOVES", "wh-west", 5)], post)
    world.catalog.put_product(product("SCARF", "30.00", currency="CHF"))
    world.catalog.put_product(product("GLOVES", "25.00", currency="CHF"))
    returns, _ = returns_for(world, clock)
    order = world.allocated(("SCARF", 1), currency="CHF", shipping_method="post")
    for shipment in order.shipments:
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")
    order = world.order(order.id)
    item = returns.request(order.id, exchange_of("L1", 1, ("GLOVES", 1)), actor="key_cs")
    post.offered = False  # the shop no longer ships orders in francs
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")

    given_up_and_refunded(world, returns, item.id, order, "no_shipping_method")


def test_an_exchange_of_an_order_paid_with_a_method_no_longer_taken_is_422_before_anything_is_sent_back(clock):
    # As for a replacement with no price: accepted, the customer would send the T-shirt back for a
    # cap that can never be placed. The units may still come back for the money.
    wallet = RetiredWallet()
    world = build_world(STOCK, wallet)
    returns, store = returns_for(world, clock, wallet)
    order = shipped_with_wallet(world)
    wallet.offered = False

    with pytest.raises(InvalidRequest) as refused:
        returns.request(order.id, exchange_of("L1", 1, ("CAP", 1)), actor="key_cs")

    assert refused.value.code == "unknown_payment_method" and store.returns == {}
    assert returns.request(order.id, ask(("L1", 1, "size_or_fit")), actor="key_cs").status is R.AUTHORIZED


@pytest.mark.parametrize("closed", ["no pickups", "removed"])
def test_an_exchange_picked_up_at_a_store_that_no_longer_takes_pickups_is_refunded_instead(clock, closed):
    # The replacement would wait at the original's pickup store, which stopped taking pickup orders
    # (or is gone) since the return was accepted: no replacement can be placed there.
    world = build_world([*STOCK, ("TSHIRT", "store-sf", 5), ("CAP", "store-sf", 5)])
    returns, _ = returns_for(world, clock)
    order = world.allocated(("TSHIRT", 1), fulfillment={"type": "pickup", "location_id": "store-sf"})
    world.actions.ready(order.id, order.shipments[0].id, actor="key_store")
    order = world.actions.collect(order.id, order.shipments[0].id, actor="key_store")
    item = returns.request(order.id, exchange_of("L1", 1, ("CAP", 1)), actor="key_cs")
    store = world.catalog.get_location("store-sf")
    assert store is not None
    if closed == "removed":
        del world.catalog.locations["store-sf"]
    else:
        world.catalog.put_location(store.model_copy(update={"pickup": False}))
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")

    given_up_and_refunded(world, returns, item.id, order, "pickup_not_offered")


def test_two_exchange_runs_whose_stock_checks_disagree_give_up_without_placing(world, clock, monkeypatch):
    # Two runs of the Exchange step (a second receipt's execution beside the first): one finds no
    # cap and gives the exchange up; a cap arrives; the other finds it. The one decision stands:
    # the T-shirt is refunded and no replacement is placed beside the refund.
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 1))
    item = returns.request(order.id, exchange_of("L1", 1, ("CAP", 1)), actor="key_cs")
    out_of(world, "CAP", "wh-east")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    placed = set(world.orders.orders)
    real_levels = world.inventory.levels
    first: list[Return] = []
    checks: list[bool] = []

    def levels(skus, locations, *, consistent=False):
        checks.append(True)
        if len(checks) == 1:  # the outer run's stock check: the other run checks, and gives up, first
            first.append(returns.exchange(item.id, actor="key_wh"))
            world.inventory.adjust("CAP", "wh-east", 5, reason="delivery")
        return real_levels(skus, locations, consistent=consistent)

    monkeypatch.setattr(world.inventory, "levels", levels)

    second = returns.exchange(item.id, actor="key_wh")

    assert first[0].exchange_not_placed == "insufficient_stock"
    assert second == first[0] == returns.get(item.id)
    assert (second.status, second.exchange_order_id, second.refund) == (R.REFUNDED, None, order.lines[0].total)
    assert set(world.orders.orders) == placed
    assert [(r.return_id, r.status) for r in world.order(order.id).payment.refunds] == [(item.id, "succeeded")]


def test_an_exchange_run_that_finds_no_stock_after_another_decided_to_place_places_the_same_one(
    world, clock, monkeypatch
):
    # One run found a cap and is placing the replacement when the last cap sells elsewhere and a
    # second run checks: the first decision stands (one replacement, whose workflow finds the stock
    # or gives the credit back), rather than the second refunding the units beside it.
    returns, order, item = received_for_exchange(world, clock, ("TSHIRT", 1), ("CAP", 1))
    real_add = world.orders.add
    inner: list[Return] = []
    puts: list[str] = []

    def add(placed: Order, *args, **kwargs) -> None:
        puts.append(placed.id)
        if placed.exchange_of == item.id and len(puts) == 1:  # the outer run's put of the replacement
            out_of(world, "CAP", "wh-east")
            inner.append(returns.exchange(item.id, actor="key_wh"))
        real_add(placed, *args, **kwargs)

    monkeypatch.setattr(world.orders, "add", add)

    outer = returns.exchange(item.id, actor="key_wh")

    replacements = [o for o in world.orders.orders.values() if o.exchange_of == item.id]
    assert [o.id for o in replacements] == [outer.exchange_order_id] == [inner[0].exchange_order_id]
    assert outer == returns.get(item.id) and (outer.status, outer.exchange_not_placed) == (R.REFUNDED, None)
    credit = replacements[0].exchange_credit
    assert credit == order.lines[0].total
    refunds = world.order(order.id).payment.refunds
    assert [(r.return_id, r.amount) for r in refunds] == [(item.id, credit - replacements[0].totals.grand_total)]
    assert not [e for e in world.history(order.id) if e.type is OrderEvent.EXCHANGE_NOT_PLACED]


def test_an_exchange_decided_on_whose_external_id_the_channel_takes_before_it_is_placed_is_refunded(
    world, clock, monkeypatch
):
    # Decided on, but the channel placed an order of its own under the replacement's external_id
    # before the put: none of this return's can ever be placed, so the decision gives way.
    returns, order, item = received_for_exchange(world, clock, ("TSHIRT", 1), ("CAP", 1))
    real_add = world.orders.add
    own: list[str] = []

    def add(placed: Order, *args, **kwargs) -> None:
        if placed.exchange_of == item.id and not own:
            assert returns.get(item.id).exchange_placing
            own.append(world.place(("CAP", 1), external_id=f"{order.external_id}-x1"))
        real_add(placed, *args, **kwargs)

    monkeypatch.setattr(world.orders, "add", add)

    settled = returns.exchange(item.id, actor="key_wh")

    assert (settled.status, settled.exchange_order_id) == (R.REFUNDED, None)
    assert settled.exchange_not_placed == ExchangeIdTaken.code
    assert [(r.return_id, r.amount) for r in world.order(order.id).payment.refunds] == [(item.id, order.lines[0].total)]
    assert world.order(own[0]).exchange_of is None


def test_the_refund_step_leaves_an_exchange_to_the_exchange_step(world, clock):
    returns, order, item = received_for_exchange(world, clock, ("TSHIRT", 1), ("CAP", 1))

    assert returns.refund(item.id, actor="key_wh").status is R.RECEIVED
    assert world.order(order.id).payment.refunds == []
    assert returns.exchange(item.id, actor="key_wh").status is R.REFUNDED


def test_an_exchange_of_an_unknown_sku_is_422_naming_the_field(world, clock):
    returns, store = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 1))

    with pytest.raises(UnknownSku) as refused:
        returns.request(order.id, exchange_of("L1", 1, ("TSHIRT", 1), ("NOPE", 1)), actor="key_cs")

    assert refused.value.details == [{"field": "exchange.lines[1].sku", "message": "no product NOPE"}]
    assert store.returns == {}


def test_an_exchange_for_a_product_with_no_price_in_the_orders_currency_is_422_before_anything_is_sent_back(
    world, clock
):
    # POST /orders refuses such a line (no_price); accepted on the return, the replacement could
    # never be placed: the units came back, the Exchange step failed for good and nothing was refunded.
    returns, store = returns_for(world, clock)
    world.catalog.put_product(product("SCARF-EU", "15.00", currency="EUR"))
    order = shipped(world, ("TSHIRT", 1))

    with pytest.raises(InvalidRequest) as refused:
        returns.request(order.id, exchange_of("L1", 1, ("TSHIRT", 1), ("SCARF-EU", 1)), actor="key_cs")

    assert refused.value.code == "no_price"
    assert refused.value.details == [{"field": "exchange.lines[1].sku", "message": "no price in USD"}]
    assert store.returns == {}


def test_an_exchange_retried_under_its_key_after_its_sku_lost_its_price_answers_the_return_made(world, clock):
    # The storefront never got the 201 and retries; meanwhile the shop sells the cap in euros only.
    # The return was made: the retry answered 422 no_price, and the customer was told there was none.
    returns, store = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 1))
    first = returns.request(order.id, exchange_of("L1", 1, ("CAP", 1)), actor="key_cs", request_key="api:key_cs:k1")
    world.catalog.put_product(product("CAP", "7.77", currency="EUR", weight_grams=90))

    again = returns.request(order.id, exchange_of("L1", 1, ("CAP", 1)), actor="key_cs", request_key="api:key_cs:k1")

    assert again == first
    assert list(store.returns) == [first.id]
    with pytest.raises(InvalidRequest) as refused:  # a new request for it is still refused
        returns.request(order.id, exchange_of("L1", 1, ("CAP", 1)), actor="key_cs", request_key="api:key_cs:k2")
    assert refused.value.code == "no_price"


def test_a_returns_service_without_the_capture_path_refuses_exchanges(world, clock):
    plugins = load_plugin_manager(enable_test_payments=True)
    refunds = RefundService(world.orders, Payments(plugins, sleep=lambda seconds: None), clock)
    returns = Returns(world.orders, FakeReturns(), world.catalog, world.inventory, world.labels, plugins.hook, refunds,
                      clock=clock)  # fmt: skip
    order = shipped(world, ("TSHIRT", 1))

    with pytest.raises(InvalidRequest) as refused:
        returns.request(order.id, exchange_of("L1", 1, ("TSHIRT", 1)), actor="key_cs")

    assert refused.value.code == "exchange_not_supported"


# --- Refunds -----------------------------------------------------------------------------------


def test_a_received_return_is_refunded_its_units_share_and_the_last_unit_takes_what_rounding_left(world, clock):
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 3))
    line_total = order.lines[0].total
    refunds = []
    for quantity in (1, 2):
        item = returns.request(order.id, ask(("L1", quantity, None)), actor="key_cs")
        returns.receive(item.id, receipt("wh-west", ("L1", quantity, "resellable")), "key_wh")
        settled = run_return_workflow(returns, item.id, actor="key_wh")
        assert settled.status is R.REFUNDED
        refunds.append(settled.refund)

    assert refunds[0] == Money.of(line_total.amount / 3, "USD")
    assert refunds[0] + refunds[1] == line_total
    after = world.order(order.id)
    assert after.payment.refunded == line_total and after.status is S.RETURNED
    assert [(r.return_id, r.kind, r.status) for r in after.payment.refunds] == [
        (return_id_for(order.id, 1), "return", "succeeded"), (return_id_for(order.id, 2), "return", "succeeded")
    ]  # fmt: skip


def test_the_fee_is_kept_back_and_settling_again_refunds_nothing_more(world, clock):
    returns, _ = returns_for(world, clock, ApprovalPolicy())
    order = shipped(world, ("TSHIRT", 1))
    item = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")
    returns.approve(item.id, None, actor="key_lead")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "damaged")), "key_wh")

    settled = run_return_workflow(returns, item.id, actor="key_wh")
    again = run_return_workflow(returns, item.id, actor="key_wh")

    assert settled.refund == order.lines[0].total - Money(amount="1.50", currency="USD")
    assert again == settled
    assert world.order(order.id).payment.refunded == settled.refund


def test_shipping_is_refunded_when_the_policy_says_so(world, clock):
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 1))
    item = returns.request(order.id, ask(("L1", 1, "wrong_item")), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")

    settled = run_return_workflow(returns, item.id, actor="key_wh")

    assert settled.refund == order.totals.grand_total
    assert world.order(order.id).payment.status.value == "refunded"


def test_shipping_is_not_refunded_when_fewer_units_arrive_than_the_return_asked_for(world, clock):
    # The policy refunded shipping because the whole order was to come back; one of three did.
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 3))
    item = returns.request(order.id, ask(("L1", 3, "damaged")), actor="key_cs")
    assert item.refund_shipping_with_whole_order
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "damaged")), "key_wh")

    settled = run_return_workflow(returns, item.id, actor="key_wh")

    line = order.lines[0]
    assert settled.refund == Money.of(line.total.amount / 3, "USD")
    assert world.order(order.id).payment.refunded == settled.refund


def one_unit_back(returns: Returns, order: Order) -> str:
    """A return of one unit of the order's first line, received resellable: its id."""
    item = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    return item.id


def test_a_lines_units_refunded_over_several_returns_add_up_to_its_total_while_one_refund_is_pending(world, clock):
    # 40.22 over three units: the first unit is worth 13.41, the first two 26.81. A return of the
    # second unit refunded while the first one's refund waits for the gateway must still count it.
    gateway = ScriptedGateway()
    returns, _ = returns_for(world, clock, gateway)
    order = shipped(world, ("MUG", 3))
    line = order.lines[0]
    assert line.total == Money.of("40.22", "USD")

    first = one_unit_back(returns, order)
    gateway.script("refund", "transient")
    assert run_return_workflow(returns, first, actor="key_wh").status is R.RECEIVED  # its refund is pending
    gateway.script("refund", "approve")
    second = run_return_workflow(returns, one_unit_back(returns, order), actor="key_wh")
    done = run_return_workflow(returns, first, actor="key_wh")
    third = run_return_workflow(returns, one_unit_back(returns, order), actor="key_wh")

    refunds = [done.refund, second.refund, third.refund]
    assert sum((r.amount for r in refunds), Decimal(0)) == line.total.amount
    assert world.order(order.id).payment.refunded == line.total


def test_two_returns_of_one_line_refunded_at_once_add_up_to_its_total(world, clock, monkeypatch):
    # 40.22 over three units: the first unit is worth 13.41, the first two 26.81. The second
    # return's refund landed between the first's read of the order and its write; each priced its
    # unit as the line's first, and the third unit then took the line 1 cent past its total.
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("MUG", 3))
    line = order.lines[0]
    assert line.total == Money.of("40.22", "USD")

    first, second = one_unit_back(returns, order), one_unit_back(returns, order)
    returns.restock(first)
    returns.record_on_order(first, "key_wh")
    before_the_next_write(world, monkeypatch, lambda: run_return_workflow(returns, second, actor="key_wh"))
    returns.refund(first, "key_wh")
    monkeypatch.undo()
    run_return_workflow(returns, one_unit_back(returns, order), actor="key_wh")

    refunds = [refund.amount for refund in world.order(order.id).payment.refunds]
    assert sorted(refunds) == [Money.of("13.40", "USD"), Money.of("13.41", "USD"), Money.of("13.41", "USD")]
    assert world.order(order.id).payment.refunded == line.total


def test_a_line_returned_over_returns_stored_before_and_after_shares_were_recorded_refunds_its_total(world, clock):
    # 40.22 over three MUGs. The first return's refund was stored before refunds recorded their
    # units' shares; the second's records them. The third counts the first as it came, first.
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("MUG", 3))
    first = run_return_workflow(returns, one_unit_back(returns, order), actor="key_wh")
    stored = world.order(order.id)
    unrecorded = [r.model_copy(update={"lines": None}) for r in stored.payment.refunds]
    world.orders.orders[order.id] = stored.model_copy(
        update={"payment": stored.payment.model_copy(update={"refunds": unrecorded})}
    )

    second = run_return_workflow(returns, one_unit_back(returns, order), actor="key_wh")
    third = run_return_workflow(returns, one_unit_back(returns, order), actor="key_wh")

    assert [r.refund.amount for r in (first, second, third)] == [Decimal("13.41"), Decimal("13.40"), Decimal("13.41")]
    assert world.order(order.id).payment.refunded == order.lines[0].total


def test_a_return_refunds_what_a_pending_appeasement_held_once_the_gateway_refuses_that_appeasement(world, clock):
    # An appeasement waiting for the gateway holds what it asked for; a return refunded meanwhile
    # must not settle for what is left of it, or refused, the appeasement gives the customer nothing.
    gateway = ScriptedGateway()
    returns, _ = returns_for(world, clock, gateway)
    order = shipped(world, ("MUG", 1))
    appeasement_left_pending(world, order)
    item = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    gateway.script("refund", "refuse", "approve")  # the appeasement is refused, the return's refund approved

    settled = run_return_workflow(returns, item.id, actor="key_wh")

    assert (settled.status, settled.refund) == (R.REFUNDED, order.lines[0].total)
    after = world.order(order.id)
    assert [(r.kind, r.status) for r in after.payment.refunds] == [("appeasement", "failed"), ("return", "succeeded")]
    assert after.payment.refunded == order.lines[0].total


def mugs_back_after_goodwill(world: World, returns: Returns) -> tuple[Order, str, str]:
    """An order of 2 MUGs (the west's parcel) and 2 CAPs (the east's): the MUGs ship, 1.00 goes back
    as goodwill, then both MUGs come back and are settled while the CAPs wait. The order, the
    CAPs' shipment and the return's id."""
    order = world.allocated(("MUG", 2), ("CAP", 2))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    world.refunds.issue_refund(order.id, Money.of("1.00", "USD"), "goodwill", "appease-1", actor="key_cs")
    item = returns.request(order.id, ask(("L1", 2, None)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 2, "resellable")), "key_wh")
    return order, world.shipment_at(order, "wh-east"), item.id


def test_a_goodwill_refund_before_a_return_is_not_swallowed_once_the_next_parcel_is_captured(world, clock):
    # The MUGs' capture less the goodwill could give back only 25.81 of their 26.81; the CAPs'
    # capture makes the rest refundable, and the customer keeps the goodwill as when the CAPs had
    # shipped before the return. Shipping and delivering again refund nothing more.
    returns, _ = returns_for(world, clock)
    order, caps, return_id = mugs_back_after_goodwill(world, returns)
    mugs = order.lines[0].total
    assert run_return_workflow(returns, return_id, actor="key_wh").refund == mugs - Money.of("1.00", "USD")

    world.actions.ship(order.id, caps, None, actor="key_wh")
    world.actions.ship(order.id, caps, None, actor="key_wh")
    after = world.actions.deliver(order.id, caps, actor="key_wh")

    paid = after.payment
    assert paid.captured == order.totals.grand_total
    assert paid.captured - paid.refunded == order.totals.grand_total - mugs - Money.of("1.00", "USD")
    for_return = [r.amount for r in paid.refunds if r.return_id == return_id and r.status == "succeeded"]
    assert sum(for_return, Money.zero("USD")) == mugs
    assert returns.get(return_id).refund == mugs  # the return shows all that was refunded for it


class ShippingBackForWrongItems:
    """A shop's policy: the shipping is refunded with any return of a wrong item, whole order or not."""

    @hookimpl(tryfirst=True)
    def oms_return_policy(self, lines) -> ReturnPolicyDecision:
        return ReturnPolicyDecision(refund_shipping=any(line.reason_code == "wrong_item" for line in lines))


@pytest.mark.parametrize(
    ("goodwill_leaves", "first_refund"),
    [
        # A return granted the shipping whose refund the goodwill capped at 2.00 recorded only those
        # 2.00 as shipping, though what it kept back (the rest of its unit and of the shipping) was
        # refunded once the CAPs were captured: the next wrong-item return then gave the other 3.00
        # of the shipping back again, 8.00 of shipping refunded for 5.00 paid.
        ("2.00", "2.00"),
        # The goodwill took all the MUGs were captured for: the first wrong-item return's refund gave
        # nothing and kept its unit and the shipping back on the order, refunded once the CAPs were
        # captured; nothing counted that shipping, and the next wrong-item return gave it back again.
        ("0.00", "0.00"),
    ],
    ids=["capped_refund_kept_back_in_part", "refund_kept_back_whole"],
)
def test_shipping_a_return_kept_back_is_given_back_once_not_again_with_the_next_return(
    world, clock, goodwill_leaves, first_refund
):
    returns, _ = returns_for(world, clock, ShippingBackForWrongItems())
    order = world.allocated(("MUG", 2), ("CAP", 4))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    goodwill = world.order(order.id).payment.captured - Money.of(goodwill_leaves, "USD")
    world.refunds.issue_refund(order.id, goodwill, "goodwill", "appease-1", actor="key_cs")
    first = returns.request(order.id, ask(("L1", 1, "wrong_item")), actor="key_cs")
    returns.receive(first.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    assert run_return_workflow(returns, first.id, actor="key_wh").refund == Money.of(first_refund, "USD")
    world.actions.ship(order.id, world.shipment_at(order, "wh-east"), None, actor="key_wh")
    second = returns.request(order.id, ask(("L1", 1, "wrong_item")), actor="key_cs")
    returns.receive(second.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    run_return_workflow(returns, second.id, actor="key_wh")

    after = world.order(order.id)
    mugs, shipping = order.lines[0].total, order.totals.shipping
    assert returns.get(first.id).refund + returns.get(second.id).refund == mugs + shipping
    assert after.payment.captured - after.payment.refunded == order.totals.grand_total - mugs - shipping - goodwill


def test_an_appeasement_worded_as_a_top_up_does_not_take_from_what_the_return_kept_back(world, clock):
    # Top-ups were told from the order's other refunds by their reason, a text an appeasement's
    # request may also carry: worded so, the 0.50 appeasement the return's refund kept back was
    # counted as its top-up, and the customer never got the MUGs' whole worth. They are told by id.
    returns, _ = returns_for(world, clock)
    order = world.allocated(("MUG", 2), ("CAP", 2))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    item = returns.request(order.id, ask(("L1", 2, None)), actor="key_cs")
    worded = f"return {item.id}, kept back until a later parcel was captured"
    world.refunds.issue_refund(order.id, Money.of("0.50", "USD"), worded, "appease-1", actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 2, "resellable")), "key_wh")
    mugs = order.lines[0].total
    assert run_return_workflow(returns, item.id, actor="key_wh").refund == mugs - Money.of("0.50", "USD")

    after = world.actions.ship(order.id, world.shipment_at(order, "wh-east"), None, actor="key_wh")

    for_return = [r.amount for r in after.payment.refunds if r.return_id == item.id and r.status == "succeeded"]
    assert sum(for_return, Money.zero("USD")) == mugs
    assert after.payment.refunded == mugs + Money.of("0.50", "USD")


def test_the_return_shows_what_its_kept_back_refund_gave_while_plain_reads_lag(world, clock, monkeypatch):
    # The CAPs' ship refunds what the MUGs' return kept back, then reads the order to show the
    # return all refunded for it: a plain read just after the refund's write may not have it yet.
    from tests.unit.test_confirmations import lagging_reads

    returns, _ = returns_for(world, clock)
    order, caps, return_id = mugs_back_after_goodwill(world, returns)
    run_return_workflow(returns, return_id, actor="key_wh")
    lagging_reads(world, monkeypatch)

    world.actions.ship(order.id, caps, None, actor="key_wh")

    assert returns.get(return_id).refund == order.lines[0].total


def test_a_return_whose_refund_gave_nothing_after_a_goodwill_refund_of_it_all_is_refunded_once_captured(world, clock):
    # The goodwill took all the MUGs' capture, so their return refunded nothing. Had the CAPs shipped
    # first, the return would have refunded all that was left; so it does once they ship.
    returns, _ = returns_for(world, clock)
    order = world.allocated(("MUG", 2), ("CAP", 2))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    goodwill = world.order(order.id).payment.captured
    world.refunds.issue_refund(order.id, goodwill, "goodwill", "appease-1", actor="key_cs")
    item = returns.request(order.id, ask(("L1", 2, None)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 2, "resellable")), "key_wh")
    assert run_return_workflow(returns, item.id, actor="key_wh").refund == Money.zero("USD")
    assert world.order(order.id).returns_kept_back == {item.id: order.lines[0].total}

    caps = world.shipment_at(order, "wh-east")
    world.actions.ship(order.id, caps, None, actor="key_wh")
    after = world.actions.deliver(order.id, caps, actor="key_wh")

    assert after.payment.captured == order.totals.grand_total
    assert after.payment.refunded == after.payment.captured  # goodwill and the MUGs' worth exceed it all
    assert [r.amount for r in after.payment.refunds if r.return_id == item.id] == [after.shipment(caps).captured]
    assert returns.get(item.id).refund == after.shipment(caps).captured


@pytest.mark.parametrize("goes_ahead", [True, False], ids=["replacement_shipped", "replacement_cancelled"])
def test_a_goodwill_refund_before_an_exchange_is_not_swallowed_once_the_next_parcel_is_captured(
    world, clock, goes_ahead
):  # fmt: skip
    # As for a return: the MUGs' credit could take only 25.81 of their 26.81, and the customer paid
    # the 1.00 again on the replacement; the CAPs' capture makes it refundable on the original.
    returns, _ = returns_for(world, clock)
    order = world.allocated(("MUG", 2), ("CAP", 2))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    world.refunds.issue_refund(order.id, Money.of("1.00", "USD"), "goodwill", "appease-1", actor="key_cs")
    item = returns.request(order.id, exchange_of("L1", 2, ("TSHIRT", 2)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 2, "resellable")), "key_wh")
    replacement = world.run(run_return_workflow(returns, item.id, actor="key_wh").exchange_order_id or "")

    caps = world.shipment_at(order, "wh-east")
    world.actions.ship(order.id, caps, None, actor="key_wh")
    world.actions.deliver(order.id, caps, actor="key_wh")
    if goes_ahead:
        replacement = delivered(world, replacement)
    else:
        replacement = world.actions.cancel(replacement.id, "changed my mind", actor="key_cs")

    original, own = world.order(order.id).payment, replacement.payment
    kept = order.totals.grand_total - order.lines[0].total - Money.of("1.00", "USD")
    if goes_ahead:
        kept = kept + replacement.totals.grand_total
    assert original.captured - original.refunded + own.captured - own.refunded == kept


@pytest.mark.parametrize("wanted", [("CAP", 1), ("TSHIRT", 2)], ids=["cheaper", "dearer"])
def test_an_exchange_shows_what_its_credit_kept_back_once_the_next_parcel_refunds_it(world, clock, wanted):
    # The MUGs' credit could take only 25.81 of their 26.81; the CAPs' ship refunds the 1.00 on
    # the original. That refund names no return (the credit counts its return's refunds as drawn
    # on it), but it was refunded for the exchange: the return shows it beside the rest of its credit.
    returns, _ = returns_for(world, clock)
    order = world.allocated(("MUG", 2), ("CAP", 2))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    world.refunds.issue_refund(order.id, Money.of("1.00", "USD"), "goodwill", "appease-1", actor="key_cs")
    item = returns.request(order.id, exchange_of("L1", 2, wanted), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 2, "resellable")), "key_wh")
    settled = run_return_workflow(returns, item.id, actor="key_wh")
    replacement = world.run(settled.exchange_order_id or "")
    rest = max(replacement.exchange_credit - replacement.totals.grand_total, Money.zero("USD"), key=lambda m: m.amount)
    assert settled.refund == rest

    caps = world.shipment_at(order, "wh-east")
    world.actions.ship(order.id, caps, None, actor="key_wh")
    world.actions.deliver(order.id, caps, actor="key_wh")

    assert world.order(order.id).payment.refunds[-1].amount == Money.of("1.00", "USD")
    assert returns.get(item.id).refund == rest + Money.of("1.00", "USD")


@pytest.mark.parametrize("goodwill", ["0.00", "1.00"], ids=["no_goodwill", "goodwill_before"])
def test_an_exchange_whose_replacement_is_cancelled_shows_all_its_credit_given_back(world, clock, goodwill):
    # The MUGs are exchanged for a CAP: 13.48 of their 26.81 is refunded at once, the rest pays for the
    # CAP. The CAP is cancelled: its credit goes back too, naming the return. The return showed 13.48.
    returns, _ = returns_for(world, clock)
    order = world.allocated(("MUG", 2), ("CAP", 2))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    if goodwill != "0.00":
        world.refunds.issue_refund(order.id, Money.of(goodwill, "USD"), "goodwill", "appease-1", actor="key_cs")
    item = returns.request(order.id, exchange_of("L1", 2, ("CAP", 1)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 2, "resellable")), "key_wh")
    replacement = world.run(run_return_workflow(returns, item.id, actor="key_wh").exchange_order_id or "")

    world.actions.cancel(replacement.id, "changed my mind", actor="key_cs")
    caps = world.shipment_at(order, "wh-east")
    world.actions.ship(order.id, caps, None, actor="key_wh")  # what the credit kept back, if any, goes back

    for_return = [r.amount for r in world.order(order.id).payment.refunds if r.reason != "goodwill"]
    assert sum(for_return, Money.zero("USD")) == order.lines[0].total
    assert returns.get(item.id).refund == order.lines[0].total


def test_an_exchange_whose_replacement_is_cancelled_shows_its_credit_given_back_while_plain_reads_lag(
    world, clock, monkeypatch
):  # fmt: skip
    # The cancel gives the credit back, then reads the original to show the return all refunded
    # for it: a plain read just after the give-back's write may not have it yet.
    from tests.unit.test_confirmations import lagging_reads

    _, order, settled = exchanged(world, clock, ("MUG", 2), ("CAP", 1))
    replacement = world.run(settled.exchange_order_id or "")
    lagging_reads(world, monkeypatch)

    world.actions.cancel(replacement.id, "changed my mind", actor="key_cs")

    assert world.returns.get(settled.id).refund == order.lines[0].total


def test_an_exchange_whose_replacement_is_cancelled_before_the_return_is_marked_shows_its_credit_given_back(
    world, clock, monkeypatch
):  # fmt: skip
    # The CAP is cancelled between its placing and the write marking the return refunded: the cancel
    # gives the credit back and finds the return still received; the step marks it with 13.48.
    returns, store = returns_for(world, clock)
    order = shipped(world, ("MUG", 2))
    item = returns.request(order.id, exchange_of("L1", 2, ("CAP", 1)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 2, "resellable")), "key_wh")
    real = store.update

    def cancelled_first(new: Return, expected: Return) -> None:
        if new.status is R.REFUNDED and expected.status is R.RECEIVED and new.exchange_order_id:
            world.actions.cancel(new.exchange_order_id, "changed my mind", actor="key_cs")
        real(new, expected)

    monkeypatch.setattr(store, "update", cancelled_first)
    settled = run_return_workflow(returns, item.id, actor="key_wh")

    assert world.order(order.id).payment.refunded == order.lines[0].total
    assert settled.refund == returns.get(item.id).refund == order.lines[0].total


@pytest.mark.parametrize("exchange", [False, True], ids=["refund", "exchange"])
def test_a_return_shows_what_it_kept_back_though_the_next_parcel_refunded_it_before_the_return_was_marked(
    world, clock, monkeypatch, exchange
):  # fmt: skip
    # The CAPs ship between the return's refund (or its exchange's credit, keeping 1.00 back) and
    # the write marking the return refunded: their ship refunds the 1.00, but finds the return still
    # received and shows it nothing; the step then marks it with what it gave itself.
    returns, store = returns_for(world, clock)
    order = world.allocated(("MUG", 2), ("CAP", 2))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    world.refunds.issue_refund(order.id, Money.of("1.00", "USD"), "goodwill", "appease-1", actor="key_cs")
    asked = exchange_of("L1", 2, ("CAP", 1)) if exchange else ask(("L1", 2, None))
    item = returns.request(order.id, asked, actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 2, "resellable")), "key_wh")
    caps, real = world.shipment_at(order, "wh-east"), store.update

    def caps_ship_first(new: Return, expected: Return) -> None:
        if new.status is R.REFUNDED and expected.status is R.RECEIVED:
            world.actions.ship(order.id, caps, None, actor="key_wh")
        real(new, expected)

    monkeypatch.setattr(store, "update", caps_ship_first)
    settled = run_return_workflow(returns, item.id, actor="key_wh")

    after = world.order(order.id)
    assert after.payment.refunds[-1].amount == Money.of("1.00", "USD")
    assert after.payment.refunds[-1].status == "succeeded"
    paid = after.payment.refunded - Money.of("1.00", "USD")  # all but the goodwill went back for the return
    assert settled.refund == returns.get(item.id).refund == paid


def test_what_a_return_kept_back_is_refunded_under_a_new_key_after_the_gateway_refused_it(world, clock):
    returns, _ = returns_for(world, clock)
    order, caps, return_id = mugs_back_after_goodwill(world, returns)
    run_return_workflow(returns, return_id, actor="key_wh")
    world.gateway.script("refund", "refuse", "approve")

    shipped_caps = world.actions.ship(order.id, caps, None, actor="key_wh")
    assert shipped_caps.payment.refunds[-1].status == "failed"
    after = world.actions.deliver(order.id, caps, actor="key_wh")

    paid = after.payment
    assert [(r.amount, r.status) for r in paid.refunds[2:]] == [
        (Money.of("1.00", "USD"), "failed"), (Money.of("1.00", "USD"), "succeeded")
    ]  # fmt: skip
    assert paid.captured - paid.refunded == order.totals.grand_total - order.lines[0].total - Money.of("1.00", "USD")


def test_what_a_return_kept_back_is_refunded_over_as_many_parcels_as_it_takes(world, clock):
    # A 25.00 goodwill left the MUGs' return 1.81 of their 26.81: 25.00 is kept back. The CAPs'
    # capture (21.67) makes only part of it refundable; the PENs' capture must make the rest so,
    # or the customer ends 3.33 short of where they would be had every parcel shipped first.
    world.catalog.put_location(location("wh-north", name="North warehouse"))
    world.inventory.set_on_hand("PEN", "wh-north", 3, reason="count")
    returns, _ = returns_for(world, clock)
    order = world.allocated(("MUG", 2), ("CAP", 2), ("PEN", 3))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    goodwill = Money.of("25.00", "USD")
    world.refunds.issue_refund(order.id, goodwill, "goodwill", "appease-1", actor="key_cs")
    item = returns.request(order.id, ask(("L1", 2, None)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 2, "resellable")), "key_wh")
    mugs = order.lines[0].total
    assert run_return_workflow(returns, item.id, actor="key_wh").refund == mugs - goodwill

    for location_id in ("wh-east", "wh-north"):
        shipment_id = world.shipment_at(order, location_id)
        world.actions.ship(order.id, shipment_id, None, actor="key_wh")
        after = world.actions.deliver(order.id, shipment_id, actor="key_wh")

    paid = after.payment
    assert paid.captured == order.totals.grand_total
    assert paid.captured - paid.refunded == order.totals.grand_total - mugs - goodwill
    assert returns.get(item.id).refund == mugs


def test_what_a_return_kept_back_is_refunded_once_a_cancel_of_the_rest_captures_the_shipping(world, clock):
    # Cancelling the CAPs leaves the order the MUGs and its 5.00 shipping, which the cancel's
    # settlement captures: that makes the 1.00 the return kept back refundable, and nothing ships
    # after to refund it.
    returns, _ = returns_for(world, clock)
    order = world.allocated(("MUG", 2), ("CAP", 2))
    mugs_parcel = world.shipment_at(order, "wh-west")
    world.actions.ship(order.id, mugs_parcel, None, actor="key_wh")
    world.actions.deliver(order.id, mugs_parcel, actor="key_wh")
    world.refunds.issue_refund(order.id, Money.of("1.00", "USD"), "goodwill", "appease-1", actor="key_cs")
    return_id = returns.request(order.id, ask(("L1", 2, None)), actor="key_cs").id
    returns.receive(return_id, receipt("wh-west", ("L1", 2, "resellable")), "key_wh")
    run_return_workflow(returns, return_id, actor="key_wh")

    after = world.actions.cancel(order.id, "no caps after all", actor="key_cs", lines={"L2": 2})

    mugs, goodwill = order.lines[0].total, Money.of("1.00", "USD")
    assert after.payment.captured == after.totals.grand_total == mugs + order.totals.shipping
    assert after.payment.captured - after.payment.refunded == after.totals.grand_total - mugs - goodwill
    assert returns.get(return_id).refund == mugs


def kept_back_refund_pending_after_the_refund_step_died(
    world: World, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> tuple[Returns, Order, Return, str, Money]:
    """The goodwill took all the MUGs' capture: their return's refund step keeps their worth back,
    then dies before marking the return refunded. The CAPs ship and refund that worth, the gateway
    leaving it pending. The returns, the order, the return, the CAPs' parcel and the MUGs' worth."""
    returns, store = returns_for(world, clock)
    order = world.allocated(("MUG", 2), ("CAP", 4))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    mugs = order.lines[0].total
    world.refunds.issue_refund(order.id, mugs, "goodwill", "appease-1", actor="key_cs")
    item = returns.request(order.id, ask(("L1", 2, None)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 2, "resellable")), "key_wh")
    real = store.update

    def dies_marking_it_refunded(new: Return, expected: Return) -> None:
        if new.status is R.REFUNDED:
            raise Died("the return's refunded write")
        real(new, expected)

    with monkeypatch.context() as patched:
        patched.setattr(store, "update", dies_marking_it_refunded)
        with pytest.raises(Died):
            returns.refund(item.id, "key_wh")
    caps = world.shipment_at(order, "wh-east")
    world.gateway.script("refund", "transient", "transient", "transient", "approve")
    assert world.actions.ship(order.id, caps, None, actor="key_wh").payment.refunds[-1].status == "pending"
    return returns, order, item, caps, mugs


def test_a_refund_step_retried_while_what_its_return_kept_back_is_pending_refunds_no_more_than_the_units_worth(
    world, clock, monkeypatch
):  # fmt: skip
    # The goodwill took all the MUGs' capture: their refund step keeps their 26.81 back, then dies
    # before marking the return refunded. The CAPs ship and refund the 26.81, the gateway leaving
    # it pending; the step retried must count it, not refund the MUGs again from the CAPs' capture.
    returns, order, item, caps, mugs = kept_back_refund_pending_after_the_refund_step_died(world, clock, monkeypatch)

    run_return_workflow(returns, item.id, actor="key_wh")
    after = world.actions.deliver(order.id, caps, actor="key_wh")

    paid = after.payment
    for_return = [r.amount for r in paid.refunds if r.return_id == item.id and r.status == "succeeded"]
    assert sum(for_return, Money.zero("USD")) == mugs
    assert paid.captured - paid.refunded == order.totals.grand_total - mugs - mugs
    assert returns.get(item.id).refund == mugs


def test_a_return_whose_refund_kept_nothing_back_leaves_the_next_parcels_ship_as_it_was(world, clock):
    returns, _ = returns_for(world, clock)
    order = world.allocated(("MUG", 2), ("CAP", 2))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    item = returns.request(order.id, ask(("L1", 2, None)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 2, "resellable")), "key_wh")
    run_return_workflow(returns, item.id, actor="key_wh")
    assert world.order(order.id).payment.refunds[0].kept_back is None

    after = world.actions.ship(order.id, world.shipment_at(order, "wh-east"), None, actor="key_wh")

    assert [r.amount for r in after.payment.refunds] == [order.lines[0].total]


@pytest.mark.parametrize("first_refunded", [True, False], ids=["first-refunded", "first-still-received"])
def test_units_a_received_return_never_brought_back_can_be_returned_later_and_the_line_refunds_its_total(
    world, clock, first_refunded
):
    # A received return holds what it brought back from its receipt on, not from its refund.
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("MUG", 3))
    first = returns.request(order.id, ask(("L1", 3, None)), actor="key_cs")
    returns.receive(first.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")  # one of three came back
    if first_refunded:
        one = run_return_workflow(returns, first.id, actor="key_wh")

    later = returns.request(order.id, ask(("L1", 2, None)), actor="key_cs")
    if not first_refunded:
        one = run_return_workflow(returns, first.id, actor="key_wh")
    returns.receive(later.id, receipt("wh-west", ("L1", 2, "resellable")), "key_wh")
    two = run_return_workflow(returns, later.id, actor="key_wh")

    assert one.refund + two.refund == order.lines[0].total
    assert world.order(order.id).lines[0].returned_quantity == 3
    with pytest.raises(InvalidRequest):  # and nothing more than shipped
        returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")


def test_a_refused_refund_is_recorded_failed_the_return_stays_received_and_a_retry_asks_under_a_new_key(world, clock):
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 1), token="tok_refund_decline")
    item = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")

    with pytest.raises(RefundNotDone):
        returns.refund(item.id, actor="key_wh")
    assert run_return_workflow(returns, item.id, actor="key_wh").status is R.RECEIVED

    after = world.order(order.id)
    assert [(r.status, r.return_id) for r in after.payment.refunds] == [("failed", item.id)] * 2
    assert len({r.id for r in after.payment.refunds}) == 2
    assert after.payment.refunded == Money.zero("USD")
    assert (after.status, after.lines[0].returned_quantity) == (S.RETURNED, 1)  # the units are back all the same


class BrokenCarrier:
    @hookimpl(tryfirst=True)
    def oms_carrier_return_label(self, return_id: str):
        raise RuntimeError("carrier down")


def test_a_label_that_cannot_be_booked_stores_no_return(world, clock):
    returns, store = returns_for(world, clock, BrokenCarrier())
    order = shipped(world, ("TSHIRT", 1))

    with pytest.raises(PluginError):
        returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")

    assert store.returns == {}
    assert not [e for e in world.history(order.id) if e.type is OrderEvent.RETURN_REQUESTED]


def test_a_workflow_that_cannot_be_started_is_transient_so_the_receipt_is_sent_again():
    from botocore.exceptions import ClientError

    from functions.adapters.workflow_starter import StepFunctionsReturnStarter

    class Refusing:
        def start_execution(self, **request):
            raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "StartExecution")

    with pytest.raises(TransientError):
        StepFunctionsReturnStarter(Refusing(), "arn:aws:states:us-east-1:1:stateMachine:r").start("rma_x")


def test_a_parcel_delivered_after_a_return_was_received_keeps_the_order_partially_returned(world, clock):
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 2), deliver=False)
    item = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    run_return_workflow(returns, item.id, actor="key_wh")

    delivered = world.actions.deliver(order.id, order.shipments[0].id, actor="carrier")

    assert delivered.status is S.PARTIALLY_RETURNED
    assert delivered.shipments[0].status.value == "delivered"


def test_a_return_label_the_carrier_hosts_is_kept_as_its_link_and_no_document_is_stored(world, clock):
    from tests.unit.test_hosted_labels import HOSTED, HostingCarrier

    returns, _ = returns_for(world, clock, HostingCarrier())
    order = shipped(world, ("TSHIRT", 1))
    labels_before = dict(world.labels.labels)

    item = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")

    assert (item.carrier, item.label_url) == ("EasyPost", f"{HOSTED}?return={item.id}")
    assert world.labels.labels == labels_before


def partly_shipped_with_a_return(world: World, clock: Clock) -> tuple[Order, Returns]:
    """An order of a MUG (west) and a CAP (east) whose MUG shipped and came back, refunded, while
    the CAP has not shipped yet."""
    returns, _ = returns_for(world, clock)
    order = world.allocated(("MUG", 1), ("CAP", 1))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    item = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    run_return_workflow(returns, item.id, actor="key_wh")
    back = world.order(order.id)
    assert (back.status, back.lines[0].returned_quantity) == (S.PARTIALLY_SHIPPED, 1)
    return back, returns


def test_a_return_received_while_the_rest_had_not_shipped_leaves_the_order_partially_returned_once_it_ships(
    world, clock
):
    order, _ = partly_shipped_with_a_return(world, clock)
    east = world.shipment_at(order, "wh-east")

    shipped_rest = world.actions.ship(order.id, east, None, actor="key_wh")
    assert shipped_rest.status is S.PARTIALLY_RETURNED
    for shipment in order.shipments:
        world.actions.deliver(order.id, shipment.id, actor="carrier")

    after = world.order(order.id)
    assert after.status is S.PARTIALLY_RETURNED
    assert [(line.returned_quantity, line.shipped_quantity) for line in after.lines] == [(1, 1), (0, 1)]


def test_cancelling_the_rest_once_every_shipped_unit_is_back_leaves_the_order_returned_with_its_count(world, clock):
    order, _ = partly_shipped_with_a_return(world, clock)

    cancelled = world.actions.cancel(order.id, "customer_request", "key_cs")

    assert cancelled.status is S.RETURNED
    assert [(line.quantity, line.returned_quantity) for line in cancelled.lines] == [(1, 1), (0, 0)]
    # Repeating the cancel of the rest finishes its clean-up, as on a shipped order: no 409.
    assert world.actions.cancel(order.id, "customer_request", "key_cs") == world.order(order.id)


class FeeForFaults:
    """A shop's policy answering first: the built-in one's shipping rule (shipping back with the whole
    order, when every line comes back for the shop's fault), and a flat restocking fee."""

    def __init__(self, fee: str) -> None:
        self.fee = fee

    @hookimpl(tryfirst=True)
    def oms_return_policy(self, order: Order, lines) -> ReturnPolicyDecision:
        fault = all(line.reason_code in ("damaged", "defective", "wrong_item") for line in lines)
        return ReturnPolicyDecision(
            fee=Money(amount=self.fee, currency=order.currency), refund_shipping_with_whole_order=fault
        )


# The MUG (12.50, 13.41 with tax) back damaged, the CAP cancelled: the whole order is back, so its
# 5.00 shipping comes back with the MUG, less the fee: a fee of all the MUG is worth leaves the
# shipping, one beyond it takes the rest from the shipping, one beyond both leaves nothing.
@pytest.mark.parametrize(
    ("fee", "refunded"), [("10.00", "8.41"), ("13.41", "5.00"), ("15.00", "3.41"), ("20.00", "0.00")]
)
@pytest.mark.parametrize("cancel_first", [True, False], ids=["cancel-first", "return-first"])
def test_a_fee_beyond_the_units_worth_is_taken_from_the_shipping_whichever_of_cancel_and_return_comes_first(
    world, clock, fee, refunded, cancel_first
):
    returns, _ = returns_for(world, clock, FeeForFaults(fee))
    order = world.allocated(("MUG", 1), ("CAP", 3))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    item = returns.request(order.id, ask(("L1", 1, "damaged")), actor="key_cs")
    if cancel_first:
        world.actions.cancel(order.id, "customer_request", "key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "damaged")), "key_wh")
    run_return_workflow(returns, item.id, actor="key_wh")
    if not cancel_first:
        world.actions.cancel(order.id, "customer_request", "key_cs")

    after = world.order(order.id)
    assert after.status is S.RETURNED
    assert (after.lines[0].total, after.totals.shipping) == (usd("13.41"), usd("5.00"))
    assert (after.payment.refunded, returns.get(item.id).refund) == (usd(refunded), usd(refunded))
    # Asked again (a repeated cancel, the reconciler's kept-back pass), nothing more goes back.
    world.actions.cancel(order.id, "customer_request", "key_cs")
    assert world.order(order.id).payment.refunded == usd(refunded)


def test_units_whose_fee_took_their_refund_leave_no_settlement_when_the_last_parcel_ships(clock):
    # Three MUGs (40.22 with tax: 13.41, 13.40 and 13.41 a unit as their cumulative shares give them)
    # come back one by one; the fee takes all of the first and the third, the second is refunded
    # 13.40. Nothing was cancelled: the CAP parcel shipping after them leaves nothing to settle (the
    # second unit's 13.40 is not one cent short of the first unit's 13.41).
    from tests.unit.test_refund_journeys import reconcile  # it imports this module's helpers

    world = build_world([("MUG", "wh-west", 3), ("CAP", "wh-east", 1)])
    policy = FeeForFaults("0.00")
    returns, _ = returns_for(world, clock, policy)
    order = world.allocated(("MUG", 3), ("CAP", 1))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    for fee in ("20.00", "0.00", "20.00"):
        policy.fee = fee
        item = returns.request(order.id, ask(("L1", 1, "size_or_fit")), actor="key_cs")
        returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
        run_return_workflow(returns, item.id, actor="key_wh")

    shipped = world.actions.ship(order.id, world.shipment_at(order, "wh-east"), None, actor="key_wh")
    reconcile(world, clock)  # the reconciler's passes, which settle what a last ship records owed

    after = world.order(order.id)
    assert not shipped.settlement_owed
    assert [(r.kind, r.amount) for r in after.payment.refunds] == [("return", usd("13.40"))]
    assert (after.payment.captured, after.payment.refunded) == (after.totals.grand_total, usd("13.40"))


# Five MUGs at 19.99 less SAVE5 (20.37, 20.36, ... a unit), two shipped and back: the first with a
# fee, the second refunded 20.36; the three that had not shipped cancelled, the line is two MUGs
# at 18.76. A fee of 20.36 refunds the first 0.01; one a cent higher refunds nothing, and the
# customer pays that cent more: the fee keeps what the unit was worth when it came back.
@pytest.mark.parametrize(("fee", "paid"), [("20.36", "25.36"), ("20.37", "25.37"), ("30.00", "25.37")])
def test_a_fee_that_took_a_units_whole_refund_keeps_its_worth_when_a_cancel_prices_the_line_again(clock, fee, paid):
    world = build_world([("MUG", "wh-west", 2), ("MUG", "wh-east", 3)])
    world.catalog.put_product(product("MUG", "19.99", weight_grams=350))
    policy = FeeForFaults(fee)
    returns, _ = returns_for(world, clock, policy)
    order = world.allocated(("MUG", 5), promo_codes=["SAVE5"])
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    for charged in (fee, "0.00"):
        policy.fee = charged
        item = returns.request(order.id, ask(("L1", 1, "size_or_fit")), actor="key_cs")
        returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
        run_return_workflow(returns, item.id, actor="key_wh")

    world.actions.cancel(order.id, "the rest is not needed", actor="key_web")

    after = world.order(order.id)
    assert (after.status, after.lines[0].total, after.totals.shipping) == (S.RETURNED, usd("37.52"), usd("5.00"))
    assert after.payment.captured - after.payment.refunded == usd(paid)


def a_line_split_over_two_parcels(clock: Clock, price: str, west: int, east: int, back: int, *promo_codes: str):
    """An order of `west + east` MUGs at `price`, the `west` ones shipped and `back` of those
    returned and refunded, the rest waiting in the east: with the world and its returns."""
    world = build_world([("MUG", "wh-west", west), ("MUG", "wh-east", east)])
    world.catalog.put_product(product("MUG", price, weight_grams=350))
    returns, _ = returns_for(world, clock)
    order = world.allocated(("MUG", west + east), promo_codes=list(promo_codes))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    item = returns.request(order.id, ask(("L1", back, None)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", back, "resellable")), "key_wh")
    run_return_workflow(returns, item.id, actor="key_wh")
    return world, returns, order


@pytest.mark.parametrize(
    ("price", "west", "east", "back", "promo_codes"),
    [
        # 3 x 1.05 with 7.25% tax is 3.38, its first unit 1.13; 2 units are 2.25, the first 1.12:
        # the second unit took 1.13 and the line 1 cent past its total.
        ("1.05", 2, 1, 1, ()),
        # 5.00 off five units is 1.00 a unit, off two 2.50: the unit refunded first was worth 20.37
        # and is worth 18.76 now; refunded the new line's rest, the line came back 1.61 past its total.
        ("19.99", 2, 3, 1, ("SAVE5",)),
        # Both shipped units came back for 40.73 before the cancel made them worth 37.52: nothing
        # was left to return, and the customer kept 3.21 beyond what was paid for.
        ("19.99", 2, 3, 2, ("SAVE5",)),
    ],
)
def test_units_returned_before_a_cancel_repriced_their_line_are_refunded_what_they_are_worth_after_it(
    clock, price, west, east, back, promo_codes
):
    world, returns, order = a_line_split_over_two_parcels(clock, price, west, east, back, *promo_codes)

    world.actions.cancel(order.id, "the rest is not needed", actor="key_web")
    if back < west:
        rest = returns.request(order.id, ask(("L1", west - back, None)), actor="key_cs")
        returns.receive(rest.id, receipt("wh-west", ("L1", west - back, "resellable")), "key_wh")
        run_return_workflow(returns, rest.id, actor="key_wh")

    # Every unit that shipped is back: the customer pays the shipping, which the policy keeps.
    after = world.order(order.id)
    line = after.lines[0]
    assert (after.status, line.quantity, line.returned_quantity) == (S.RETURNED, west, west)
    assert after.payment.captured - after.payment.refunded == after.totals.shipping
    if back < west:  # the units returned after the cancel brought the line's refunds to its total
        returned = [refund.amount for refund in after.payment.refunds if refund.kind == "return"]
        assert sum(returned, Money.zero("USD")) == line.total
        assert after.payment.captured == after.totals.grand_total


@pytest.mark.parametrize(
    ("price", "promo_codes"),
    [
        # The unit exchanged was worth 1.13 of 3.38, is worth 1.12 of 2.25 once the third is cancelled.
        ("1.05", ()),
        # Worth 20.37 of five units less 5.00, 18.76 of two: the credit paid 1.61 beyond it.
        ("19.99", ("SAVE5",)),
    ],
)
def test_a_unit_exchanged_before_a_cancel_repriced_its_line_counts_what_its_credit_was_worth(clock, price, promo_codes):
    world = build_world([("MUG", "wh-west", 2), ("MUG", "wh-east", 3), ("CAP", "wh-west", 5)])
    world.catalog.put_product(product("MUG", price, weight_grams=350))
    returns, _ = returns_for(world, clock)
    order = world.allocated(("MUG", 5), promo_codes=list(promo_codes))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    item = returns.request(order.id, exchange_of("L1", 1, ("CAP", 1)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    replacement = delivered(
        world, world.run(run_return_workflow(returns, item.id, actor="key_wh").exchange_order_id or "")
    )

    world.actions.cancel(order.id, "the rest is not needed", actor="key_web")
    rest = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")
    returns.receive(rest.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    run_return_workflow(returns, rest.id, actor="key_wh")

    # Both MUGs that shipped are back, one for the CAP: the customer pays the shipping and the CAP.
    original, replacement = world.order(order.id), world.order(replacement.id)
    paid = [o.payment.captured - o.payment.refunded for o in (original, replacement)]
    assert paid[0] + paid[1] == original.totals.shipping + replacement.totals.grand_total
    # What the exchanged unit was worth is stored with the order, and the system's own: never shown.
    assert Order.model_validate_json(original.stored_json()).exchange_shares == original.exchange_shares != {}
    assert "exchange_shares" not in original.model_dump(mode="json")


# --- Expiry (the jeopardy scan's OMS_RETURN_EXPIRY_DAYS) ----------------------------------------------


def expiry_entries(world: World, order_id: str) -> list[dict]:
    return [{"actor": e.actor, **e.detail} for e in world.history(order_id) if e.type is OrderEvent.RETURN_CANCELLED]


def test_an_authorized_return_never_received_expires_and_its_units_may_be_returned_again(world, clock):
    returns, store = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 1))
    item = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")
    with pytest.raises(InvalidRequest):
        returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")  # the unit is on the open return
    # An expiry shorter than the return window, so the window is still open after it.
    clock.now += timedelta(days=3)

    assert returns.expire(item.id, clock.now - timedelta(days=2), actor="jeopardy_scan") is True

    cancelled = store.get(item.id)
    assert (cancelled.status, cancelled.version, cancelled.updated_at) == (R.CANCELLED, item.version + 1, clock.now)
    # Its times written as the API writes every time, "...Z" (found on make run: "+00:00" here alone).
    assert expiry_entries(world, order.id) == [{
        "actor": "jeopardy_scan", "return_id": item.id, "reason": "return_expired", "status": "authorized",
        "created_at": utc_text(item.created_at), "authorized_at": utc_text(item.created_at),
    }]  # fmt: skip
    assert utc_text(item.created_at).endswith("Z")
    again = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")
    assert (again.ordinal, again.status) == (2, R.AUTHORIZED)
    with pytest.raises(InvalidTransition):
        returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")


def test_a_requested_return_nobody_approved_expires_and_can_no_longer_be_approved(world, clock):
    returns, store = returns_for(world, clock, ApprovalPolicy())
    order = shipped(world, ("TSHIRT", 1))
    item = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")
    clock.now += timedelta(days=31)

    assert returns.expire(item.id, clock.now - timedelta(days=30), actor="jeopardy_scan") is True

    assert store.get(item.id).status is R.CANCELLED
    assert [e["status"] for e in expiry_entries(world, order.id)] == ["requested"]
    with pytest.raises(InvalidTransition):
        returns.approve(item.id, "late", actor="key_lead")


def test_a_return_younger_than_the_expiry_is_left_as_it_is(world, clock):
    returns, store = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 1))
    item = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")

    assert returns.expire(item.id, item.created_at, actor="jeopardy_scan") is False

    assert store.get(item.id) == item and expiry_entries(world, order.id) == []


def test_a_return_received_after_the_expiry_read_it_is_never_cancelled(world, clock, monkeypatch):
    returns, store = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 1))
    item = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")
    received = returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    # The expiry read the return while it was still authorized; the receipt was written since.
    stale_reads = iter([item])
    read = store.get
    monkeypatch.setattr(
        store,
        "get",
        lambda return_id, consistent=False: (None if consistent else next(stale_reads, None)) or read(return_id),
    )
    clock.now += timedelta(days=31)

    assert returns.expire(item.id, clock.now - timedelta(days=30), actor="jeopardy_scan") is False

    assert store.get(item.id) == received and expiry_entries(world, order.id) == []


def test_expiring_a_return_twice_or_from_two_passes_at_once_cancels_it_and_records_it_once(world, clock, monkeypatch):
    returns, store = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 2))
    item = returns.request(order.id, ask(("L1", 2, None)), actor="key_cs")
    clock.now += timedelta(days=31)
    before = clock.now - timedelta(days=30)
    assert returns.expire(item.id, before, actor="jeopardy_scan") is True
    cancelled = store.get(item.id)

    assert returns.expire(item.id, before, actor="jeopardy_scan") is False
    # A concurrent pass that read the return before the first one's write.
    stale_reads = iter([item])
    read = store.get
    monkeypatch.setattr(
        store,
        "get",
        lambda return_id, consistent=False: (None if consistent else next(stale_reads, None)) or read(return_id),
    )
    assert returns.expire(item.id, before, actor="jeopardy_scan") is False

    assert read(item.id) == cancelled and len(expiry_entries(world, order.id)) == 1


def test_an_expired_exchange_return_never_places_its_replacement(world, clock):
    returns, store = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 1))
    item = returns.request(order.id, exchange_of("L1", 1, ("MUG", 1)), actor="key_cs")
    clock.now += timedelta(days=31)
    placed = set(world.orders.orders)

    assert returns.expire(item.id, clock.now - timedelta(days=30), actor="jeopardy_scan") is True

    with pytest.raises(ReturnNotReceived):
        returns.exchange(item.id, actor="key_wh")
    with pytest.raises(ReturnNotReceived):
        run_return_workflow(returns, item.id, actor="key_wh")
    assert set(world.orders.orders) == placed and store.get(item.id).exchange_order_id is None
    assert not [e for e in world.history(order.id) if e.type is OrderEvent.EXCHANGE_PLACED]


@pytest.mark.parametrize("status", [R.RECEIVED, R.REFUNDED, R.REJECTED, R.CANCELLED])
def test_only_a_return_nothing_of_which_arrived_can_be_cancelled(world, clock, status):
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 1))
    item = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs").model_copy(update={"status": status})

    with pytest.raises(InvalidTransition):
        item.cancel(at=clock.now)


# --- Shipping back: decided when the refund is written, on the units that came back -----------


class ShippingAlwaysPolicy:
    """A shop's policy answering first: every return gets the shipping back, whatever it holds."""

    @hookimpl(tryfirst=True)
    def oms_return_policy(self) -> ReturnPolicyDecision:
        return ReturnPolicyDecision(refund_shipping=True)


def refunded_units(order: Order, units: int) -> Money:
    """What the first `units` units of the order's first line are worth (its total in proportion)."""
    line = order.lines[0]
    return Money.of(line.total.amount * units / line.quantity, order.currency)


def test_shipping_is_not_refunded_when_the_return_it_counted_on_never_arrives(world, clock):
    # Two returns of one shirt each, both damaged: the second was told shipping comes back because
    # the first would bring the other shirt; the first expires and the customer keeps that shirt.
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 2))
    assert order.totals.shipping.amount > 0
    first = returns.request(order.id, ask(("L1", 1, "damaged")), actor="key_cs")
    second = returns.request(order.id, ask(("L1", 1, "damaged")), actor="key_cs")
    returns.receive(second.id, receipt("wh-west", ("L1", 1, "damaged")), "key_wh")

    settled = run_return_workflow(returns, second.id, actor="key_wh")
    clock.now += timedelta(days=3)
    assert returns.expire(first.id, clock.now - timedelta(days=2), actor="jeopardy_scan") is True

    assert settled.refund == refunded_units(order, 1)
    assert world.order(order.id).payment.refunded == refunded_units(order, 1)


@pytest.mark.parametrize("last", [0, 1], ids=["first-return-arrives-last", "second-return-arrives-last"])
def test_shipping_is_refunded_by_whichever_return_brings_the_whole_order_back(world, clock, last):
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 2))
    items = [returns.request(order.id, ask(("L1", 1, "defective")), actor="key_cs") for _ in range(2)]
    early, late = items[1 - last], items[last]

    returns.receive(early.id, receipt("wh-west", ("L1", 1, "damaged")), "key_wh")
    before = run_return_workflow(returns, early.id, actor="key_wh")
    returns.receive(late.id, receipt("wh-west", ("L1", 1, "damaged")), "key_wh")
    after = run_return_workflow(returns, late.id, actor="key_wh")

    assert before.refund == refunded_units(order, 1)
    assert after.refund == order.lines[0].total - refunded_units(order, 1) + order.totals.shipping
    refunded = world.order(order.id).payment
    assert refunded.refunded == order.totals.grand_total
    assert [r.shipping for r in refunded.refunds] == [None, order.totals.shipping]


def test_shipping_is_not_refunded_when_part_of_the_order_came_back_for_no_fault_of_the_shop(world, clock):
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 2))
    first = returns.request(order.id, ask(("L1", 1, "no_longer_needed")), actor="key_cs")
    returns.receive(first.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    run_return_workflow(returns, first.id, actor="key_wh")
    second = returns.request(order.id, ask(("L1", 1, "damaged")), actor="key_cs")
    returns.receive(second.id, receipt("wh-west", ("L1", 1, "damaged")), "key_wh")

    settled = run_return_workflow(returns, second.id, actor="key_wh")

    assert settled.refund == order.lines[0].total - refunded_units(order, 1)
    assert world.order(order.id).payment.refunded == order.lines[0].total


def test_a_policy_granting_shipping_on_every_return_has_it_refunded_once(world, clock):
    returns, _ = returns_for(world, clock, ShippingAlwaysPolicy())
    order = shipped(world, ("TSHIRT", 3))
    settled = []
    for _ in range(2):
        item = returns.request(order.id, ask(("L1", 1, "size_or_fit")), actor="key_cs")
        returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
        settled.append(run_return_workflow(returns, item.id, actor="key_wh"))

    assert settled[0].refund == refunded_units(order, 1) + order.totals.shipping
    assert settled[1].refund == refunded_units(order, 2) - refunded_units(order, 1)
    assert world.order(order.id).payment.refunded == refunded_units(order, 2) + order.totals.shipping


def test_a_return_granted_shipping_whose_parcel_came_back_short_is_refunded_its_units_alone(world, clock):
    # The shipping comes back only when every unit the return asked for arrived (README, Refund).
    returns, _ = returns_for(world, clock, ShippingAlwaysPolicy())
    order = shipped(world, ("TSHIRT", 3))
    item = returns.request(order.id, ask(("L1", 2, "size_or_fit")), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")

    settled = run_return_workflow(returns, item.id, actor="key_wh")

    assert settled.refund == refunded_units(order, 1)
    assert world.order(order.id).payment.refunds[0].shipping is None


def as_stored_before_shipping_was_recorded(world: World, order_id: str) -> None:
    """The order as the version before PaymentRefund.shipping stored it: its return refunds gave
    the shipping back (whole, in their amount) without saying so."""
    order = world.order(order_id)
    refunds = [refund.model_copy(update={"shipping": None}) for refund in order.payment.refunds]
    world.orders.orders[order_id] = order.model_copy(
        update={"payment": order.payment.model_copy(update={"refunds": refunds})}
    )


def test_shipping_a_refund_gave_back_before_it_was_recorded_is_not_given_back_again(world, clock):
    # A policy granting shipping on every return: the first return was refunded its unit and the
    # shipping by the earlier version (which recorded no `shipping` on the refund); the second,
    # refunded now, must not give the shipping back a second time.
    returns, _ = returns_for(world, clock, ShippingAlwaysPolicy())
    order = shipped(world, ("TSHIRT", 3))
    settled = []
    for index in range(2):
        item = returns.request(order.id, ask(("L1", 1, "size_or_fit")), actor="key_cs")
        returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
        settled.append(run_return_workflow(returns, item.id, actor="key_wh"))
        if index == 0:
            as_stored_before_shipping_was_recorded(world, order.id)

    assert settled[0].refund == refunded_units(order, 1) + order.totals.shipping
    assert settled[1].refund == refunded_units(order, 2) - refunded_units(order, 1)
    assert world.order(order.id).payment.refunded == refunded_units(order, 2) + order.totals.shipping


def test_shipping_an_exchange_credit_gave_back_before_credits_claimed_it_is_not_given_back_again(world, clock):
    # A policy granting shipping on every return: the first return's exchange was settled by the
    # version before shipping claims, its credit holding the shirt and the shipping; the second
    # return, a plain one refunded now, must not give the shipping back a second time.
    returns, _ = returns_for(world, clock, ShippingAlwaysPolicy())
    order = shipped(world, ("TSHIRT", 3))
    swap = returns.request(order.id, exchange_of("L1", 1, ("TSHIRT", 1)), actor="key_cs")
    returns.receive(swap.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    swapped = run_return_workflow(returns, swap.id, actor="key_wh")
    credit = world.order(swapped.exchange_order_id or "").exchange_credit
    assert credit == refunded_units(order, 1) + order.totals.shipping
    world.orders.orders[order.id] = world.order(order.id).model_copy(update={"shipping_claims": {}})
    item = returns.request(order.id, ask(("L1", 1, "size_or_fit")), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")

    settled = run_return_workflow(returns, item.id, actor="key_wh")

    assert settled.refund == refunded_units(order, 2) - refunded_units(order, 1)


def damaged_exchange_of(line_id: str, quantity: int, *wanted: tuple[str, int]) -> RequestReturn:
    return RequestReturn.model_validate(
        {"lines": [{"line_id": line_id, "quantity": quantity, "reason": "torn", "reason_code": "damaged"}],
         "exchange": {"lines": [{"sku": sku, "quantity": q} for sku, q in wanted]}}
    )  # fmt: skip


@pytest.mark.parametrize("exchange_first", [True, False], ids=["exchange-settled-first", "refund-settled-first"])
def test_shipping_goes_back_once_between_an_exchange_and_a_refund_that_bring_the_order_back(
    world, clock, exchange_first
):
    # Both arrived before either was settled: each sees the whole order back, but only one of them
    # (the exchange's credit, or the refund) may give the shipping back.
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 2))
    swap = returns.request(order.id, damaged_exchange_of("L1", 1, ("MUG", 1)), actor="key_cs")
    plain = returns.request(order.id, ask(("L1", 1, "damaged")), actor="key_cs")
    for item in (swap, plain):
        returns.receive(item.id, receipt("wh-west", ("L1", 1, "damaged")), "key_wh")

    first, second = (swap, plain) if exchange_first else (plain, swap)
    run_return_workflow(returns, first.id, actor="key_wh")
    run_return_workflow(returns, second.id, actor="key_wh")

    replacement = world.order(returns.get(swap.id).exchange_order_id or "")
    credit = replacement.exchange_credit or Money.zero("USD")
    rest = max(credit - replacement.totals.grand_total, Money.zero("USD"), key=lambda money: money.amount)
    # The credit paid for the replacement and what it left over was refunded on the original.
    original = world.order(order.id)
    assert original.payment.refunded + credit - rest == order.totals.grand_total
    claimed = {swap.id: order.totals.shipping} if exchange_first else {}
    assert Order.model_validate_json(original.stored_json()).shipping_claims == claimed == original.shipping_claims
    assert "shipping_claims" not in original.model_dump(mode="json")


def test_a_returns_refund_left_pending_waits_for_its_removed_payment_plugin_and_is_made_once(world, clock):
    # The step that died after the gateway refunded left its refund pending. Asked again with the
    # plugin removed, it was recorded failed and the next run refunded the units under a new key:
    # the customer was refunded twice once the plugin was back.
    removed, spy = Removed(), PaymentSpy()
    returns, _ = returns_for(world, clock, removed, spy)
    order = shipped(world, ("MUG", 1))
    item = one_unit_back(returns, order)
    returns.restock(item)
    returns.record_on_order(item, "key_wh")
    with pytest.MonkeyPatch.context() as patched:
        dies_before_recording(world, patched, "payment_refunded")
        with pytest.raises(Died):
            returns.refund(item, "returns-workflow")
    removed.gone = True

    for _ in range(3):  # the workflow's retries
        with pytest.raises(NoPaymentPlugin):
            returns.refund(item, "returns-workflow")

    assert returns.get(item).status is R.RECEIVED
    assert [r.status for r in world.order(order.id).payment.refunds] == ["pending"]
    failed = [h.detail["kind"] for h in world.history(order.id) if h.type is OrderEvent.PAYMENT_REFUND_FAILED]
    assert failed == ["no_plugin"]
    removed.gone = False

    done = returns.refund(item, "returns-workflow")
    assert (done.status, done.refund) == (R.REFUNDED, order.lines[0].total)
    assert world.order(order.id).payment.refunded == order.lines[0].total
    assert [amount for _, amount, _ in spy.refunded] == [order.lines[0].total]


def test_an_exchange_decided_on_whose_product_loses_its_price_before_it_is_placed_is_refunded_instead(
    world, clock, monkeypatch
):
    # Decided on (every check passed), but the shop priced the cap in euros only before the
    # replacement's put: no run can ever place it, so the decision gives way to a refund instead of
    # a step failing until the return is recorded stuck (at the workflow's retry: a concurrent run
    # may have been putting the replacement it priced before).
    returns, order, item = received_for_exchange(world, clock, ("TSHIRT", 1), ("CAP", 1))
    real_place = world.capture.place_exchange

    def place_exchange(*args, **kwargs) -> Order:
        assert returns.get(item.id).exchange_placing
        world.catalog.put_product(product("CAP", "7.77", currency="EUR", weight_grams=90))
        return real_place(*args, **kwargs)

    monkeypatch.setattr(world.capture, "place_exchange", place_exchange)
    refused = run_return_workflow(returns, item.id, actor="key_wh")
    assert (refused.status, refused.exchange_not_placed) == (R.RECEIVED, None)
    assert world.order(order.id).payment.refunds == []
    clock.now += timedelta(seconds=19)
    with pytest.raises(RefundNotDone):
        returns.exchange(item.id, actor="key_wh")
    clock.now += timedelta(seconds=11)  # the workflow's retry

    given_up_and_refunded(world, returns, item.id, order, "no_price")
    # What the credit held is released with it: an appeasement may refund all that is left captured.
    after = world.order(order.id)
    assert after.refundable() == after.payment.captured - after.payment.refunded


def cap_priced_in_euros_as_placed(world, monkeypatch) -> None:
    """The CAP an exchange asks for repriced in EUR just as its replacement is placed (an order in
    USD): the replacement cannot be priced, the workflow run leaves the return received, and a later run
    gives the exchange up (`no_price`)."""
    real_place = world.capture.place_exchange

    def place_exchange(*args, **kwargs) -> Order:
        world.catalog.put_product(product("CAP", "7.77", currency="EUR", weight_grams=90))
        return real_place(*args, **kwargs)

    monkeypatch.setattr(world.capture, "place_exchange", place_exchange)


def test_an_exchange_given_up_once_decided_whose_refund_is_refused_holds_nothing_back_from_a_person(
    world, clock, monkeypatch
):
    # Given up, the return is refunded as a plain one; its refund refused (asked again later), a
    # person may still refund the customer everything captured, as for any return. The credit held for
    # the cap that will never be placed kept 21.44 of the 26.44 from them.
    gateway = ScriptedGateway()
    returns, _ = returns_for(world, clock, gateway)
    order = shipped(world, ("TSHIRT", 1))
    item = returns.request(order.id, exchange_of("L1", 1, ("CAP", 1)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    cap_priced_in_euros_as_placed(world, monkeypatch)
    assert run_return_workflow(returns, item.id, actor="key_wh").status is R.RECEIVED
    clock.now += timedelta(seconds=30)  # past the workflow's retry
    gateway.script("refund", "refuse")
    with pytest.raises(RefundNotDone):
        returns.exchange(item.id, actor="key_wh")

    assert [(r.amount, r.status) for r in world.order(order.id).payment.refunds] == [(order.lines[0].total, "failed")]
    appeased = world.refunds.issue_refund(order.id, order.payment.captured, "goodwill", "appease-1", actor="key_cs")
    assert (appeased.status, world.order(order.id).payment.refunded) == ("succeeded", order.payment.captured)


def test_a_damaged_exchange_of_the_whole_order_given_up_once_decided_refunds_the_shipping_its_credit_claimed(
    world, clock, monkeypatch
):
    # As above, but the T-shirt came back damaged, the whole order: the credit claimed the shipping
    # before the cap lost its price. Given up, the units' refund gives the shipping back too.
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 1))
    item = returns.request(order.id, damaged_exchange_of("L1", 1, ("CAP", 1)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "damaged")), "key_wh")
    cap_priced_in_euros_as_placed(world, monkeypatch)
    assert run_return_workflow(returns, item.id, actor="key_wh").status is R.RECEIVED
    clock.now += timedelta(seconds=30)  # past the workflow's retry

    settled = run_return_workflow(returns, item.id, actor="key_wh")

    assert (settled.status, settled.exchange_not_placed) == (R.REFUNDED, "no_price")
    assert settled.refund == order.payment.captured == world.order(order.id).payment.refunded


def test_an_exchange_refused_in_one_run_while_another_places_it_is_placed_and_not_refunded_too(
    world, clock, monkeypatch
):
    # Two runs past the decision: the shop priced the cap in euros only while one run was putting
    # the replacement it had priced; the other, refused, gave the exchange up and refunded the
    # T-shirt beside the replacement its credit paid for: the customer was paid twice.
    returns, order, item = received_for_exchange(world, clock, ("TSHIRT", 1), ("CAP", 1))
    real_add = world.orders.add
    inner: list[Return] = []

    def add(placed: Order, *args, **kwargs) -> None:
        if placed.exchange_of == item.id and not inner:  # the outer run's put of the replacement
            world.catalog.put_product(product("CAP", "7.77", currency="EUR", weight_grams=90))
            inner.append(run_return_workflow(returns, item.id, actor="key_wh"))
        real_add(placed, *args, **kwargs)

    monkeypatch.setattr(world.orders, "add", add)

    run_return_workflow(returns, item.id, actor="key_wh")
    clock.now += timedelta(seconds=30)  # the workflow's retry
    settled = run_return_workflow(returns, item.id, actor="key_wh")

    (replacement,) = [o for o in world.orders.orders.values() if o.exchange_of == item.id]
    assert (settled.status, settled.exchange_order_id, settled.exchange_not_placed) == (
        R.REFUNDED, replacement.id, None
    )  # fmt: skip
    credit = order.lines[0].total
    assert replacement.exchange_credit == credit
    refunds = world.order(order.id).payment.refunds
    assert [(r.return_id, r.amount) for r in refunds] == [(item.id, credit - replacement.totals.grand_total)]
    assert not [e for e in world.history(order.id) if e.type is OrderEvent.EXCHANGE_NOT_PLACED]


def test_a_refused_exchange_whose_external_id_the_channel_takes_meanwhile_is_refunded_for_its_refusal(
    world, clock, monkeypatch
):
    # The replacement was refused after the decision; before the retry gave the exchange up, the
    # channel placed an order of its own under the replacement's external_id: that order is not
    # this exchange, and the retry refunds the units for the refusal instead of failing on it.
    returns, order, item = received_for_exchange(world, clock, ("TSHIRT", 1), ("CAP", 1))
    cap_priced_in_euros_as_placed(world, monkeypatch)
    assert run_return_workflow(returns, item.id, actor="key_wh").status is R.RECEIVED
    own = world.place(("TSHIRT", 1), external_id=f"{order.external_id}-x1")
    clock.now += timedelta(seconds=30)  # the workflow's retry

    given_up_and_refunded(world, returns, item.id, order, "no_price")
    assert world.order(own).exchange_of is None


def test_a_refused_exchange_whose_replacement_a_concurrent_run_recorded_settles_without_waiting(
    world, clock, monkeypatch
):
    # The run that placed the replacement recorded it, then found the gateway down for the rest of
    # the credit; the other run's refusal was written meanwhile. The retry finishes the exchange:
    # it does not wait out the refusal as if a replacement might still be put.
    gateway = ScriptedGateway()
    returns, _ = returns_for(world, clock, gateway)
    order = shipped(world, ("TSHIRT", 1))
    item = returns.request(order.id, exchange_of("L1", 1, ("CAP", 1)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    real_add = world.orders.add
    inner: list[Return] = []

    def add(placed: Order, *args, **kwargs) -> None:
        if placed.exchange_of == item.id and not inner:
            world.catalog.put_product(product("CAP", "7.77", currency="EUR", weight_grams=90))
            inner.append(run_return_workflow(returns, item.id, actor="key_wh"))
        real_add(placed, *args, **kwargs)

    monkeypatch.setattr(world.orders, "add", add)
    gateway.script("refund", "transient")
    outer = run_return_workflow(returns, item.id, actor="key_wh")
    assert outer.status is R.RECEIVED and outer.exchange_order_id and returns.get(item.id).exchange_refused
    gateway.script("refund", "approve")

    settled = returns.exchange(item.id, actor="key_wh")

    assert (settled.status, settled.exchange_order_id, settled.exchange_not_placed) == (
        R.REFUNDED, outer.exchange_order_id, None
    )  # fmt: skip


def test_a_return_requested_just_after_the_ship_is_not_refused_while_plain_reads_lag(world, clock, monkeypatch):
    # The store hands the parcel over and requests the customer's return at the counter at once: a
    # plain read just after the ship's write may still show nothing shipped, which must not refuse it.
    from tests.unit.test_confirmations import lagging_reads

    returns, _ = returns_for(world, clock)
    order = world.allocated(("MUG", 2))
    lagging_reads(world, monkeypatch)
    world.actions.ship(order.id, order.shipments[0].id, None, actor="key_wh")

    item = returns.request(order.id, ask(("L1", 2, None)), actor="key_cs")

    assert [(line.line_id, line.quantity) for line in item.lines] == [("L1", 2)]


def lagging_return_reads(store: FakeReturns, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain reads show each return as it was before its last write, as an eventually consistent
    GetItem may just after the write; consistent reads show it as written."""
    real_get, real_update = store.get, store.update
    before: dict[str, Return] = {}

    def update(item: Return, expected: Return) -> None:
        real_update(item, expected)
        before[item.id] = expected

    def get(return_id: str, consistent: bool = False) -> Return | None:
        return real_get(return_id) if consistent or return_id not in before else before[return_id]

    monkeypatch.setattr(store, "update", update)
    monkeypatch.setattr(store, "get", get)


def test_a_return_read_or_changed_just_after_its_201_is_found_while_plain_reads_do_not_show_it_yet(
    world, clock, monkeypatch
):
    # A client approves (or reads) the return at once: a plain read just after its creation may
    # not show it yet, which must not answer 404 for a return that exists.
    returns, store = returns_for(world, clock)
    order = shipped(world, ("MUG", 2))
    item = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")
    real_get = store.get

    def unseen(return_id: str, consistent: bool = False) -> Return | None:
        return real_get(return_id) if consistent else None

    monkeypatch.setattr(store, "get", unseen)

    assert returns.get(item.id) == item
    assert item.status is R.AUTHORIZED
    received = returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    assert received.status is R.RECEIVED


def test_the_return_shows_what_its_kept_back_refund_gave_while_plain_reads_of_returns_lag(world, clock, monkeypatch):
    # The CAPs ship just after the MUGs' return was marked refunded with what it could give then:
    # a plain read of the return may still show it received, and it would never show the rest.
    returns, store = returns_for(world, clock)
    order, caps, return_id = mugs_back_after_goodwill(world, returns)
    lagging_return_reads(store, monkeypatch)
    run_return_workflow(returns, return_id, actor="key_wh")

    world.actions.ship(order.id, caps, None, actor="key_wh")

    monkeypatch.undo()  # the return as written
    assert store.get(return_id).refund == order.lines[0].total


def test_a_refund_step_retried_while_what_its_return_kept_back_is_pending_refunds_it_once_while_plain_reads_lag(
    world, clock, monkeypatch
):  # fmt: skip
    # As above, but the retried step finishes the pending refund and reads the order just after that
    # write: a plain read may still show it pending, which must not make the step refund it again.
    from tests.unit.test_confirmations import lagging_reads

    returns, order, item, _, mugs = kept_back_refund_pending_after_the_refund_step_died(world, clock, monkeypatch)
    lagging_reads(world, monkeypatch)

    run_return_workflow(returns, item.id, actor="key_wh")

    monkeypatch.undo()  # the order as written
    paid = world.order(order.id).payment
    assert [r.amount for r in paid.refunds if r.return_id == item.id and r.status == "succeeded"] == [mugs]
    assert returns.get(item.id).refund == mugs


def test_the_workflow_the_receipt_starts_finds_it_received_while_plain_reads_of_returns_lag(world, clock, monkeypatch):
    # POST /returns/{id}/receive writes the receipt, then starts the returns workflow at once: its
    # steps' plain reads may still show the return authorized. ReturnNotReceived is not retried (the
    # execution records the return stuck and the alarm calls a person; the reconciler starts it again
    # only ReconcileAfterMinutes later), so a step says "not received" only on a read that shows
    # every write acknowledged before it.
    returns, store = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 2))
    item = returns.request(order.id, ask(("L1", 2, None)), actor="key_cs")
    lagging_return_reads(store, monkeypatch)
    returns.receive(item.id, receipt("wh-west", ("L1", 2, "resellable")), "key_wh")
    before = world.level("TSHIRT", "wh-west")

    returns.check_received(item.id)
    returns.restock(item.id)
    returns.record_on_order(item.id, actor="returns-workflow")
    returns.refund(item.id, actor="returns-workflow")

    monkeypatch.undo()  # the return as written
    assert store.get(item.id).status is R.REFUNDED
    assert world.level("TSHIRT", "wh-west") == (before[0] + 2, before[1], before[2] + 2)
    assert world.order(order.id).status is S.RETURNED


def test_an_exchange_shows_what_its_credit_kept_back_once_another_returns_step_finishes_the_refund_of_it(world, clock):
    # The MUGs' credit could take only 25.81 of their 26.81; the CAPs' ship refunds the 1.00, but the
    # gateway leaves it pending. A CAP's return finishes it before its own refund. Before: that
    # refund names no return (the credit's), so nothing showed it on the MUGs' return.
    returns, _ = returns_for(world, clock)
    order = world.allocated(("MUG", 2), ("CAP", 2))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    world.refunds.issue_refund(order.id, Money.of("1.00", "USD"), "goodwill", "appease-1", actor="key_cs")
    item = returns.request(order.id, exchange_of("L1", 2, ("CAP", 1)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 2, "resellable")), "key_wh")
    settled = run_return_workflow(returns, item.id, actor="key_wh")
    world.run(settled.exchange_order_id or "")
    world.gateway.script("refund", "transient")
    world.actions.ship(order.id, world.shipment_at(order, "wh-east"), None, actor="key_wh")
    [kept] = [r for r in world.order(order.id).payment.refunds if r.status == "pending"]
    assert (kept.amount, kept.return_id) == (Money.of("1.00", "USD"), None)

    cap = returns.request(order.id, ask(("L2", 1, None)), actor="key_cs")
    returns.receive(cap.id, receipt("wh-east", ("L2", 1, "resellable")), "key_wh")
    run_return_workflow(returns, cap.id, actor="key_wh")

    assert world.order(order.id).payment.refund_by_id(kept.id).status == "succeeded"
    assert returns.get(item.id).refund == settled.refund + Money.of("1.00", "USD")


def with_one_coordinate(world: World, order: Order) -> None:
    """`order` as stored before an address needed both coordinates or neither (h390's rule)."""
    address = order.shipping_address.model_copy(update={"latitude": 37.77, "longitude": None})
    world.orders.orders[order.id] = world.order(order.id).model_copy(update={"shipping_address": address})


def test_an_exchange_on_an_order_whose_stored_address_todays_rules_refuse_is_422_before_anything_is_sent_back(
    world, clock
):
    # The replacement keeps the original's address (API.md), held to today's rules as a new
    # order's: pydantic's error escaped the request (a 500). A shipped order's address is no
    # longer edited, so it is 422 naming the field; a return without an exchange is still taken.
    returns, store = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 1))
    with_one_coordinate(world, order)

    with pytest.raises(InvalidRequest) as refused:
        returns.request(order.id, exchange_of("L1", 1, ("CAP", 1)), actor="key_cs")

    assert refused.value.code == "validation_error"
    assert [detail["field"] for detail in refused.value.details] == ["shipping_address.longitude"]
    assert store.returns == {}
    assert returns.request(order.id, ask(("L1", 1, "damaged")), actor="key_cs").exchange is None


def test_an_exchange_whose_originals_stored_address_todays_rules_refuse_by_receipt_is_refunded_instead(world, clock):
    # Accepted, then a rule refused the stored address before the units came back: the Exchange
    # step failed with pydantic's error at every retry and the units were never refunded. The
    # replacement can never be placed (the shipped original's address is not edited): given up,
    # and the units refunded as a plain return's, its history naming the field.
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 1))
    item = returns.request(order.id, exchange_of("L1", 1, ("CAP", 1)), actor="key_cs")
    with_one_coordinate(world, order)
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")

    given_up_and_refunded(world, returns, item.id, order, "validation_error")
    (entry,) = [e for e in world.history(order.id) if e.type is OrderEvent.EXCHANGE_NOT_PLACED]
    assert [detail["field"] for detail in entry.detail["details"]] == ["shipping_address.longitude"]


class CrashingRefund:
    """A payment plugin whose refund raises (a bug of its own, not a gateway's answer) while `crashing`."""

    crashing = False

    @hookimpl(tryfirst=True)
    def oms_payment_refund(self) -> None:
        if self.crashing:
            raise ValueError("the plugin's own bug")


def test_a_cancelled_replacements_give_back_whose_plugin_crashes_is_cancelled_and_refunded_by_the_pending_pass(clock):
    # Before: the cancel was written, then the give-back's refund raised PluginError out of it, a
    # 500 for a cancel that had happened. The refund is recorded pending with the plugin's failure;
    # the pending-refund pass finishes it once the plugin works.
    from tests.unit.test_pending_refund_sweep import InMemoryPendingRefunds  # it imports this module

    crashing = CrashingRefund()
    world = build_world(STOCK, crashing)
    _, order, settled = exchanged(world, clock, ("TSHIRT", 1), ("TSHIRT", 1), ("CAP", 1))
    replacement = world.run(settled.exchange_order_id or "")
    crashing.crashing = True

    cancelled = world.actions.cancel(replacement.id, "changed my mind", actor="key_cs")

    assert cancelled.status is S.CANCELLED and cancelled.payment.status.value == "voided"
    [pending] = world.order(order.id).payment.refunds
    assert (pending.amount, pending.status) == (order.lines[0].total, "pending")
    failed = [h for h in world.history(order.id) if h.type is OrderEvent.PAYMENT_REFUND_FAILED]
    assert [(h.detail or {}).get("kind") for h in failed] == ["plugin_error"]

    crashing.crashing = False
    clock.now += timedelta(minutes=20)
    PendingRefundSweep(InMemoryPendingRefunds(world), world.refunds, clock, after=timedelta(minutes=15)).run(
        "reconciler"
    )
    [refund] = world.order(order.id).payment.refunds
    assert (refund.amount, refund.status) == (order.lines[0].total, "succeeded")


def a_change_lands_before_the_owed_write(returns: Returns, landed: list[Return]) -> Callable[[Order], list]:
    """Returns.owed_entries as the history's reader calls it, a second return of the order (another
    unit of L1, by another key) written once between that reader's read of the history and its
    write of what a dead writer owed: a change landing between the two."""

    def owed_entries(order: Order) -> list:
        if not landed:
            landed.append(returns.request(order.id, ask(("L1", 1, None)), actor="key_other"))
        return returns.owed_entries(order)

    return owed_entries


def test_an_access_log_page_that_writes_a_dead_writers_entry_as_a_change_lands_neither_repeats_nor_skips_one(
    world, clock, monkeypatch
):
    # The page's read of the history wrote the entry the dead writer owed (after the change landed,
    # so one place further on than the page numbered it): the next page, after it by that number,
    # showed it again and never the change that landed.
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 2))
    the_next_order_write_dies(world, monkeypatch)
    with pytest.raises(LambdaDied):
        returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")
    later = [OrderRead(request_id=f"r{n}", order_id=order.id, at=clock.now + timedelta(minutes=n), actor="key_audit",
                       action="get") for n in (1, 2)]  # fmt: skip
    log = AccessLog(OrderQueries(world.orders, owed_entries=a_change_lands_before_the_owed_write(returns, [])),
                    Reads(*later))  # fmt: skip
    stored = len(world.history(order.id))

    first, cursor = log.page(order.id, None, stored + 1, None)  # up to the owed entry, the reads after it
    rest, end = log.page(order.id, None, 100, cursor)

    assert end is None
    # Every change once, where the history stores it (the change that landed, then the entry owed), then the reads.
    stored_then = [(e.actor, e.type.value) for e in world.history(order.id)]
    assert stored_then[-2:] == [("key_other", "return_requested"), ("key_cs", "return_requested")]
    assert [(e.actor, e.action) for e in first + rest] == stored_then + [("key_audit", "get")] * 2


def test_a_history_page_that_writes_dead_writers_entries_as_a_change_lands_neither_repeats_nor_skips_one(
    world, clock, monkeypatch
):
    # As the access log's page above, by place: the page numbered the first entry owed as if nothing
    # had landed before it, and the next page, from the place after it, showed it again.
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 3))
    for actor in ("key_cs", "key_cs2"):
        the_next_order_write_dies(world, monkeypatch)
        with pytest.raises(LambdaDied):
            returns.request(order.id, ask(("L1", 1, None)), actor=actor)
        monkeypatch.undo()
    queries = OrderQueries(world.orders, owed_entries=a_change_lands_before_the_owed_write(returns, []))
    stored = len(world.history(order.id))

    first, cursor = queries.history_page(order.id, None, stored + 1, None)  # up to the first entry owed
    rest, end = queries.history_page(order.id, None, 100, cursor)

    assert end is None and first + rest == world.history(order.id)
    assert [e.actor for e in world.history(order.id)[-3:]] == ["key_other", "key_cs", "key_cs2"]


def test_an_exchange_given_up_once_decided_releases_the_shipping_its_credit_claimed_for_the_other_return(
    world, clock, monkeypatch
):
    # Both shirts came back damaged, one for a cap and one for money. The exchange's credit claimed
    # the shipping, then the cap lost its price as the replacement was placed: the exchange is given
    # up, and its refund is refused (asked again later). The other return, which brings the order's
    # last unit back too, gets the shipping meanwhile; the exchange's refund then does not give it again.
    gateway = ScriptedGateway()
    returns, _ = returns_for(world, clock, gateway)
    order = shipped(world, ("TSHIRT", 2))
    swap = returns.request(order.id, damaged_exchange_of("L1", 1, ("CAP", 1)), actor="key_cs")
    plain = returns.request(order.id, ask(("L1", 1, "damaged")), actor="key_cs")
    for each in (swap, plain):
        returns.receive(each.id, receipt("wh-west", ("L1", 1, "damaged")), "key_wh")
    cap_priced_in_euros_as_placed(world, monkeypatch)
    assert run_return_workflow(returns, swap.id, actor="key_wh").status is R.RECEIVED
    assert world.order(order.id).shipping_claims == {swap.id: order.totals.shipping}
    clock.now += timedelta(seconds=30)  # past the workflow's retry
    gateway.script("refund", "refuse")
    assert run_return_workflow(returns, swap.id, actor="key_wh").status is R.RECEIVED
    assert world.order(order.id).shipping_claims == {}
    gateway.script("refund", "approve")

    paid = run_return_workflow(returns, plain.id, actor="key_wh")
    swapped = run_return_workflow(returns, swap.id, actor="key_wh")

    assert (swapped.status, swapped.exchange_not_placed) == (R.REFUNDED, "no_price")
    assert paid.refund == refunded_units(order, 1) + order.totals.shipping
    assert swapped.refund == order.lines[0].total - refunded_units(order, 1)
    assert world.order(order.id).payment.refunded == order.totals.grand_total


def test_a_cancel_of_a_replacement_its_credit_pays_whole_asks_no_gateway_about_its_key(clock, caplog):
    # The cap costs less than the T-shirt's refund: the replacement owes nothing beyond its credit,
    # so AuthorizePayment never asked the gateway under its key. Cancelled before it was authorized,
    # its cancel and a retried authorization release nothing under that key (behind a plugin without
    # the lookup hook, a WARNING would say a hold the gateway cannot have was left).
    from tests.unit.test_workflow import NoLookup

    world = build_world(STOCK, NoLookup())
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 1))
    item = returns.request(order.id, exchange_of("L1", 1, ("CAP", 1)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    replacement = world.order(run_return_workflow(returns, item.id, actor="key_wh").exchange_order_id or "")
    assert replacement.payment.status is PaymentStatus.PENDING and replacement.payable().amount == 0

    with caplog.at_level("WARNING", logger="core.cancellation"):
        world.actions.cancel(replacement.id, "changed my mind", "key_web")
        with pytest.raises(OrderClosed):
            world.workflow.authorize_payment(replacement.id, attempt=1)

    assert world.order(replacement.id).status is OrderStatus.CANCELLED
    assert [r.getMessage() for r in caplog.records if r.name == "core.cancellation"] == []
    assert world.spy.voided == []


def test_a_cancel_of_a_replacement_that_owes_beyond_its_credit_voids_what_its_lost_authorization_made(
    clock, monkeypatch
):
    # A T-shirt and a cap for the T-shirt: the replacement owes the cap beyond its credit, and the
    # step that authorized it died after the gateway approved, before its write. Cancelled, the
    # replacement's key is looked up and what the gateway holds under it is voided.
    from tests.unit.test_workflow import dies_recording_the_authorization

    world = build_world(STOCK)
    returns, _ = returns_for(world, clock)
    order = shipped(world, ("TSHIRT", 1))
    item = returns.request(order.id, exchange_of("L1", 1, ("TSHIRT", 1), ("CAP", 1)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    replacement = world.order(run_return_workflow(returns, item.id, actor="key_wh").exchange_order_id or "")
    assert replacement.payable().amount > 0
    dies_recording_the_authorization(world, monkeypatch)
    with pytest.raises(RuntimeError):
        world.workflow.authorize_payment(replacement.id, attempt=0)
    monkeypatch.undo()
    made = list(world.spy.authorized)
    assert len(made) == 2  # the original's and the replacement's lost one

    world.actions.cancel(replacement.id, "changed my mind", "key_web")

    cancelled = world.order(replacement.id)
    assert (cancelled.status, cancelled.payment.status) == (OrderStatus.CANCELLED, PaymentStatus.PENDING)
    assert world.spy.voided == made[1:]


def test_an_exchange_of_a_replacement_appeased_holds_only_what_its_card_has_left_and_its_last_mug_refunds_from_it():
    # A cap exchanged for three mugs: the card pays the two from the west beyond the cap's credit
    # (26.81), then a person gives 15.00 back. One mug comes back for a cap: the second exchange's
    # credit takes the 11.81 the card has left, and the mug's other 1.60 is carried from the cap's
    # credit. The east mug ships (the card pays 10.08) and comes back for money: its 13.40 is
    # refunded from those 10.08 first, the cap's order the rest. Recording the second replacement
    # must not rewrite its hold to what was ever captured (13.41, beyond what was left): the east
    # mug's refund then took 1.60 more from the cap's order and left 1.60 of the card held by nothing.
    from tests.unit.test_unit_cancellation import three_days_on

    world, returns = three_days_on(
        [("MUG", "wh-west", 2), ("MUG", "wh-east", 1), ("CAP", "wh-west", 1), ("CAP", "wh-east", 5)]
    )
    order = world.allocated(("CAP", 1))
    world.actions.ship(order.id, order.shipments[0].id, None, actor="key_wh")
    item = returns.request(order.id, exchange_of("L1", 1, ("MUG", 3)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    first = world.run(run_return_workflow(returns, item.id, actor="key_wh").exchange_order_id or "")
    west = world.shipment_at(first, "wh-west")
    world.actions.ship(first.id, west, None, actor="key_wh")
    world.actions.deliver(first.id, west, actor="key_wh")
    appeased = world.refunds.issue_refund(first.id, usd("15.00"), "goodwill", "appease-1", actor="key_cs")
    assert (appeased.status, world.order(first.id).payment.captured) == ("succeeded", usd("26.81"))
    back = returns.request(first.id, exchange_of("L1", 1, ("CAP", 1)), actor="key_cs")
    returns.receive(back.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    swapped = run_return_workflow(returns, back.id, actor="key_wh")
    second = world.order(swapped.exchange_order_id or "")
    assert (swapped.status, second.exchange_credit) == (R.REFUNDED, usd("13.41"))

    assert world.order(first.id).credit_holds == {back.id: usd("26.81") - usd("15.00")}
    east = world.shipment_at(first, "wh-east")
    world.actions.ship(first.id, east, None, actor="key_wh")
    world.actions.deliver(first.id, east, actor="key_wh")
    assert world.order(first.id).payment.captured == usd("36.89")
    mug = returns.request(first.id, ask(("L1", 1, None)), actor="key_cs")
    returns.receive(mug.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    paid = run_return_workflow(returns, mug.id, actor="key_wh")

    assert paid.refund == usd("13.40")
    mine = [(r.return_id, r.amount) for r in world.order(first.id).payment.refunds if r.return_id == mug.id]
    assert mine == [(mug.id, usd("36.89") - usd("26.81"))]
    above = [(r.return_id, r.amount) for r in world.order(order.id).payment.refunds]
    assert above == [(item.id, usd("13.40") - usd("10.08"))]  # drawn on the cap's credit
    assert world.order(first.id).refundable().amount == 0
