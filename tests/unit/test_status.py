"""The transition tables are the one place statuses are related, and nothing writes past them:
not an Order method, not a buggy service handing the repository a hand-made version."""

import itertools

import pytest
from pydantic import ValidationError

from core.errors import InvalidTransition
from core.models import Allocation, CaptureRequest, Order, Payment, PaymentRefund, Shipment, ShipmentLine
from core.status import (
    EDITABLE,
    IMPORT_TRANSITIONS,
    PAYMENT_TRANSITIONS,
    REFUND_TRANSITIONS,
    RESOURCEABLE,
    RETURN_TRANSITIONS,
    SHIPMENT_TRANSITIONS,
    TERMINAL,
    TRANSITIONS,
    ImportStatus,
    OrderStatus,
    PaymentStatus,
    RefundStatus,
    ReturnStatus,
    ShipmentStatus,
    can_transition,
    check_successor,
)
from tests.fakes import FakeOrders
from tests.unit.conftest import a_stored_order, usd

TABLES = [
    pytest.param(OrderStatus, TRANSITIONS, id="order"),
    pytest.param(PaymentStatus, PAYMENT_TRANSITIONS, id="payment"),
    pytest.param(ShipmentStatus, SHIPMENT_TRANSITIONS, id="shipment"),
    pytest.param(ImportStatus, IMPORT_TRANSITIONS, id="import"),
]


@pytest.mark.parametrize(("statuses", "table"), TABLES)
def test_every_status_has_a_row(statuses, table):
    assert set(table) == set(statuses)


def test_the_contract_values_of_payment_and_shipment_statuses():
    assert [s.value for s in PaymentStatus] == [
        "pending", "authorized", "declined", "partially_captured", "captured", "voided",
        "partially_refunded", "refunded",
    ]  # fmt: skip
    # ready_for_pickup: a pickup the store has picked; cancelled: a pickup nobody collected in time.
    assert [s.value for s in ShipmentStatus] == ["pending", "ready_for_pickup", "shipped", "delivered", "cancelled"]


def test_terminal_statuses_lead_nowhere():
    assert {OrderStatus.CANCELLED, OrderStatus.PAYMENT_FAILED, OrderStatus.RETURNED} == TERMINAL


def test_main_path_is_allowed_in_order():
    path = ["pending", "authorized", "allocated", "partially_shipped", "shipped", "delivered"]
    for current, target in itertools.pairwise(path):
        assert can_transition(OrderStatus(current), OrderStatus(target))


def test_the_payment_moves_only_forward_and_refunds_follow_captures():
    P = PaymentStatus
    for path in (
        [P.PENDING, P.AUTHORIZED, P.PARTIALLY_CAPTURED, P.CAPTURED, P.PARTIALLY_REFUNDED, P.REFUNDED],
        [P.PENDING, P.AUTHORIZED, P.VOIDED],
        [P.PENDING, P.DECLINED],
        [P.PARTIALLY_CAPTURED, P.PARTIALLY_REFUNDED],
        [P.CAPTURED, P.REFUNDED],
    ):
        for current, target in itertools.pairwise(path):
            assert can_transition(current, target), (current, target)
    assert not can_transition(P.VOIDED, P.CAPTURED)
    assert not can_transition(P.AUTHORIZED, P.REFUNDED)  # nothing captured, nothing to refund
    assert not can_transition(P.DECLINED, P.AUTHORIZED)


def test_statuses_of_different_kinds_are_never_related():
    assert not can_transition(PaymentStatus.PENDING, OrderStatus.AUTHORIZED)
    assert not can_transition(ShipmentStatus.PENDING, PaymentStatus.AUTHORIZED)


def test_nothing_goes_back_to_pending_once_paid():
    assert not any(OrderStatus.PENDING in TRANSITIONS[s] for s in OrderStatus if s != OrderStatus.ON_HOLD)


def test_cancel_is_refused_once_anything_shipped():
    for status in (OrderStatus.PARTIALLY_SHIPPED, OrderStatus.SHIPPED, OrderStatus.DELIVERED):
        assert not can_transition(status, OrderStatus.CANCELLED)


def test_orders_are_edited_in_place_before_allocation_and_sourced_again_after_it():
    assert {OrderStatus.PENDING, OrderStatus.ON_HOLD, OrderStatus.AUTHORIZED} == EDITABLE
    assert {OrderStatus.ALLOCATED, OrderStatus.BACKORDERED} == RESOURCEABLE
    assert all(can_transition(status, OrderStatus.AUTHORIZED) for status in RESOURCEABLE)


# Every move a journey makes, written out apart from core/status.py (as IMPORT_ALLOWED is below):
# the matrices further down read the tables themselves, so they pass whatever the tables say, and
# an edge dropped from a table (a hold that can no longer be released) or added to one (a voided
# payment captured) would pass them. Here it fails until both places say the same.
S, P, H, R = OrderStatus, PaymentStatus, ShipmentStatus, ReturnStatus
ORDER_MOVES = {
    # placed: authorized, held for review, declined, or cancelled before the payment answered
    (S.PENDING, S.AUTHORIZED), (S.PENDING, S.ON_HOLD), (S.PENDING, S.PAYMENT_FAILED), (S.PENDING, S.CANCELLED),
    # a hold resumes to the status it was put on from, or the held order is cancelled
    (S.ON_HOLD, S.PENDING), (S.ON_HOLD, S.AUTHORIZED), (S.ON_HOLD, S.ALLOCATED), (S.ON_HOLD, S.BACKORDERED),
    (S.ON_HOLD, S.CANCELLED),
    # sourced: all of it reserved, or waiting for stock; held or cancelled first
    (S.AUTHORIZED, S.ALLOCATED), (S.AUTHORIZED, S.BACKORDERED), (S.AUTHORIZED, S.ON_HOLD), (S.AUTHORIZED, S.CANCELLED),
    # stock arrived; cancelled or held while waiting; an edit sends it back to be sourced
    (S.BACKORDERED, S.ALLOCATED), (S.BACKORDERED, S.CANCELLED), (S.BACKORDERED, S.AUTHORIZED),
    (S.BACKORDERED, S.ON_HOLD),
    # one parcel of several left, or every one; held; cancelled; an edit or a reject sources it
    # again; a pickup collected at the store
    (S.ALLOCATED, S.PARTIALLY_SHIPPED), (S.ALLOCATED, S.SHIPPED), (S.ALLOCATED, S.ON_HOLD),
    (S.ALLOCATED, S.CANCELLED), (S.ALLOCATED, S.AUTHORIZED), (S.ALLOCATED, S.DELIVERED),
    # the rest shipped or cancelled: shipped, delivered, or returned when units that left came back first
    (S.PARTIALLY_SHIPPED, S.SHIPPED), (S.PARTIALLY_SHIPPED, S.DELIVERED), (S.PARTIALLY_SHIPPED, S.PARTIALLY_RETURNED),
    (S.PARTIALLY_SHIPPED, S.RETURNED),
    (S.SHIPPED, S.DELIVERED), (S.SHIPPED, S.PARTIALLY_RETURNED), (S.SHIPPED, S.RETURNED),
    (S.DELIVERED, S.PARTIALLY_RETURNED), (S.DELIVERED, S.RETURNED),
    # another return of some units, or the last of them back
    (S.PARTIALLY_RETURNED, S.PARTIALLY_RETURNED), (S.PARTIALLY_RETURNED, S.RETURNED),
}  # fmt: skip
PAYMENT_MOVES = {
    (P.PENDING, P.AUTHORIZED), (P.PENDING, P.DECLINED),
    (P.AUTHORIZED, P.PARTIALLY_CAPTURED), (P.AUTHORIZED, P.CAPTURED), (P.AUTHORIZED, P.VOIDED),
    # a refund while other parcels are still to be captured (a return of the first one)
    (P.PARTIALLY_CAPTURED, P.CAPTURED), (P.PARTIALLY_CAPTURED, P.PARTIALLY_REFUNDED),
    (P.PARTIALLY_CAPTURED, P.REFUNDED),
    (P.CAPTURED, P.PARTIALLY_REFUNDED), (P.CAPTURED, P.REFUNDED),
    (P.PARTIALLY_REFUNDED, P.REFUNDED),
}  # fmt: skip
SHIPMENT_MOVES = {
    (H.PENDING, H.SHIPPED), (H.PENDING, H.READY_FOR_PICKUP), (H.PENDING, H.CANCELLED),
    # collected, or uncollected in time
    (H.READY_FOR_PICKUP, H.DELIVERED), (H.READY_FOR_PICKUP, H.CANCELLED),
    (H.SHIPPED, H.DELIVERED),
}  # fmt: skip
RETURN_MOVES = {
    (R.REQUESTED, R.AUTHORIZED), (R.REQUESTED, R.REJECTED), (R.REQUESTED, R.CANCELLED),
    (R.AUTHORIZED, R.RECEIVED), (R.AUTHORIZED, R.CANCELLED),
    (R.RECEIVED, R.REFUNDED),
}  # fmt: skip
REFUND_MOVES = {(RefundStatus.PENDING, RefundStatus.SUCCEEDED), (RefundStatus.PENDING, RefundStatus.FAILED)}


@pytest.mark.parametrize(
    ("statuses", "table", "moves"),
    [
        pytest.param(OrderStatus, TRANSITIONS, ORDER_MOVES, id="order"),
        pytest.param(PaymentStatus, PAYMENT_TRANSITIONS, PAYMENT_MOVES, id="payment"),
        pytest.param(ShipmentStatus, SHIPMENT_TRANSITIONS, SHIPMENT_MOVES, id="shipment"),
        pytest.param(ReturnStatus, RETURN_TRANSITIONS, RETURN_MOVES, id="return"),
        pytest.param(RefundStatus, REFUND_TRANSITIONS, REFUND_MOVES, id="refund"),
    ],
)
def test_each_table_has_exactly_the_moves_its_journeys_make(statuses, table, moves):
    in_table = {(current, target) for current in statuses for target in table[current]}

    assert sorted(in_table - moves) == [], "in the table but no journey's"
    assert sorted(moves - in_table) == [], "a journey's move missing from the table"
    assert {(a, b) for a in statuses for b in statuses if can_transition(a, b)} == moves


# --- check_successor: what the repositories accept ------------------------------------------------

SHIPMENT_ID = "shp_" + "a" * 24


def an_order(order_status: str = "allocated", payment_status: str = "authorized", shipment_status: str = "pending"):
    zero = usd("0.00")
    return a_stored_order(
        ("MUG-1", 1),
        status=OrderStatus(order_status),
        payment=Payment(method="test", status=PaymentStatus(payment_status), authorized=zero, captured=zero,
                        refunded=zero, authorization="auth_1"),
        shipments=[Shipment(id=SHIPMENT_ID, location_id="wh-1", lines=[], carrier="c", service="s",
                            status=ShipmentStatus(shipment_status))],
    )  # fmt: skip


def written_by_a_buggy_service(order: Order, *, status=None, payment=None, shipment=None, version=None) -> Order:
    """The next version as a careless service would make it: model_copy, which validates nothing."""
    update: dict = {"version": order.version + 1 if version is None else version}
    if status is not None:
        update["status"] = status
    if payment is not None:
        update["payment"] = order.payment.model_copy(update={"status": payment})
    if shipment is not None:
        update["shipments"] = [order.shipments[0].model_copy(update={"status": shipment})]
    return order.model_copy(update=update)


def every_pair(statuses, table):
    return [(a, b, a == b or b in table[a]) for a in statuses for b in statuses]


@pytest.mark.parametrize(("current", "target", "allowed"), every_pair(OrderStatus, TRANSITIONS))
def test_an_order_status_write_must_be_in_the_table(current, target, allowed):
    old = an_order(order_status=current)
    assert_successor(old, written_by_a_buggy_service(old, status=target), allowed)


@pytest.mark.parametrize(("current", "target", "allowed"), every_pair(PaymentStatus, PAYMENT_TRANSITIONS))
def test_a_payment_status_write_must_be_in_the_table(current, target, allowed):
    old = an_order(payment_status=current)
    assert_successor(old, written_by_a_buggy_service(old, payment=target), allowed)


@pytest.mark.parametrize(("current", "target", "allowed"), every_pair(ShipmentStatus, SHIPMENT_TRANSITIONS))
def test_a_shipment_status_write_must_be_in_the_table(current, target, allowed):
    old = an_order(shipment_status=current)
    assert_successor(old, written_by_a_buggy_service(old, shipment=target), allowed)


def assert_successor(old: Order, new: Order, allowed: bool) -> None:
    orders = FakeOrders()
    orders.orders[old.id], orders.histories[old.id] = old, []
    if allowed:
        check_successor(old, new)
        orders.update(new, old, [])
        assert orders.get(old.id) == new
    else:
        with pytest.raises(InvalidTransition):
            check_successor(old, new)
        with pytest.raises(InvalidTransition):
            orders.update(new, old, [])
        assert orders.get(old.id) == old


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"status": "shiped"}, id="order"),
        pytest.param({"payment": "captued"}, id="payment"),
        pytest.param({"shipment": "deliverd"}, id="shipment"),
    ],
)
def test_a_misspelt_status_is_refused_at_the_repository(change):
    old = an_order()
    assert_successor(old, written_by_a_buggy_service(old, **change), allowed=False)


def test_a_misspelt_status_is_refused_by_validation():
    zero = usd("0.00")
    with pytest.raises(ValidationError):
        Payment(method="test", status="captued", authorized=zero, captured=zero, refunded=zero)
    with pytest.raises(ValidationError):
        Shipment(id=SHIPMENT_ID, location_id="wh-1", lines=[], carrier="c", service="s", status="deliverd")
    old = an_order()
    # A Payment made without validation is validated again when it goes into a new Order version.
    with pytest.raises(ValidationError):
        Order.model_validate({**dict(old), "payment": old.payment.model_copy(update={"status": "captued"})})


def test_a_version_is_the_next_one_or_the_same_order_unchanged():
    old = an_order()
    assert_successor(old, written_by_a_buggy_service(old, version=old.version + 2), allowed=False)
    changed_in_place = written_by_a_buggy_service(old, status="cancelled", version=old.version)
    assert_successor(old, changed_in_place, allowed=False)
    assert_successor(old, old.model_copy(), allowed=True)  # a write that only appends history
    assert_successor(old, written_by_a_buggy_service(old, status="cancelled").model_copy(update={"id": "ord_2"}),
                     allowed=False)  # fmt: skip


def test_a_new_shipment_starts_pending_and_one_that_left_never_disappears():
    old = an_order()
    extra = old.shipments[0].model_copy(update={"id": "shp_" + "b" * 24})
    assert_successor(old, old.model_copy(update={"version": 2, "shipments": [*old.shipments, extra]}), True)
    shipped = extra.model_copy(update={"status": ShipmentStatus.SHIPPED})
    assert_successor(old, old.model_copy(update={"version": 2, "shipments": [*old.shipments, shipped]}), False)
    left = an_order(order_status="partially_shipped", shipment_status="shipped")
    assert_successor(left, left.model_copy(update={"version": 2, "shipments": []}), False)
    assert_successor(old, old.model_copy(update={"version": 2, "shipments": []}), True)  # a pending one may go


def test_a_cancelled_shipment_may_go_and_a_pickup_at_its_store_only_with_every_parcel_and_reservation():
    cancelled = an_order(shipment_status="cancelled")
    assert_successor(cancelled, cancelled.model_copy(update={"version": 2, "shipments": []}), True)
    ready = an_order(shipment_status="ready_for_pickup")
    # An edit sends the whole order back to be sourced: no parcel and no reservation stays.
    assert_successor(ready, ready.model_copy(update={"version": 2, "shipments": [], "allocations": []}), True)
    held = [Allocation(line_id="L1", location_id="wh-1", quantity=1)]
    assert_successor(ready, ready.model_copy(update={"version": 2, "shipments": [], "allocations": held}), False)
    # With another parcel kept, the pickup is cancelled (expiry, a cancel), never dropped.
    other = ready.shipments[0].model_copy(update={"id": "shp_" + "b" * 24, "status": ShipmentStatus.PENDING})
    both = ready.model_copy(update={"shipments": [*ready.shipments, other]})
    assert_successor(both, both.model_copy(update={"version": 2, "shipments": [other]}), False)


@pytest.mark.parametrize("requested", [False, True])
def test_a_capture_asked_and_not_recorded_pins_its_shipments_lines_and_the_authorization(requested):
    # The gateway may have captured it already: the ship repeated records it, as it was asked.
    capture = CaptureRequest(shipment_id=SHIPMENT_ID, amount=usd("1.00"), authorization="auth_1")
    old = an_order().model_copy(update={"captures_requested": [capture] if requested else []})
    voided = written_by_a_buggy_service(old, payment=PaymentStatus.VOIDED)
    other_lines = old.shipments[0].model_copy(update={"lines": [ShipmentLine(line_id="L1", quantity=1)]})
    relined = old.model_copy(update={"version": old.version + 1, "shipments": [other_lines]})

    assert_successor(old, voided, allowed=not requested)
    assert_successor(old, relined, allowed=not requested)
    # Anything else may change under it: another parcel's lines, the payment's other captures.
    extra = old.shipments[0].model_copy(update={"id": "shp_" + "b" * 24})
    two = old.model_copy(update={"shipments": [*old.shipments, extra]})
    extra_relined = extra.model_copy(update={"lines": [ShipmentLine(line_id="L1", quantity=1)]})
    assert_successor(two, two.model_copy(update={"version": 2, "shipments": [old.shipments[0], extra_relined]}), True)
    partly = written_by_a_buggy_service(old, payment=PaymentStatus.PARTIALLY_CAPTURED)
    assert_successor(
        old, partly.model_copy(update={"payment": partly.payment.model_copy(update={"captured": usd("1.00")})}), True
    )


@pytest.mark.parametrize("requested", [False, True])
def test_a_settlement_capture_asked_and_not_recorded_pins_what_was_captured_before_it(requested):
    # Its gateway key derives from what was captured before it (core/payment_keys.py).
    settlement = CaptureRequest(amount=usd("1.00"), authorization="auth_1")
    old = an_order(payment_status="partially_captured")
    old = old.model_copy(update={"captures_requested": [settlement] if requested else []})
    captured_more = old.model_copy(
        update={"version": 2, "payment": old.payment.model_copy(update={"captured": usd("2.00")})}
    )

    assert_successor(old, captured_more, allowed=not requested)
    assert_successor(old, old.model_copy(update={"version": 2}), allowed=True)


def with_refunds(order: Order, *statuses: str, version: int | None = None) -> Order:
    """`order` (as written by a careless service: nothing validated) whose payment holds refunds
    `ref_0`, `ref_1`, ... of 1.00 in `statuses`."""
    refunds = [
        PaymentRefund(id=f"ref_{n}", amount=usd("1.00"), reason="goodwill", at=order.created_at).model_copy(
            update={"status": status}
        )
        for n, status in enumerate(statuses)
    ]
    payment = order.payment.model_copy(update={"refunds": refunds})
    return order.model_copy(update={"version": order.version if version is None else version, "payment": payment})


@pytest.mark.parametrize(
    ("before", "after", "allowed"),
    [
        ((), ("pending",), True),
        (("pending",), ("succeeded",), True),
        (("pending",), ("failed",), True),
        (("pending",), ("pending",), True),
        (("succeeded",), ("succeeded", "pending"), True),
        ((), ("succeeded",), False),  # a new refund starts pending: the gateway is asked after it is written
        (("succeeded",), ("pending",), False),  # money that went back never comes to be asked for again
        (("succeeded",), ("failed",), False),
        (("failed",), ("succeeded",), False),  # a refused one is asked again under a new key, not revived
        (("pending",), ("refunded",), False),  # misspelt
        (("succeeded",), (), False),  # a refund recorded never disappears
    ],
)
def test_a_refund_status_write_must_be_in_its_table(before, after, allowed):
    old = with_refunds(an_order(), *before)
    assert_successor(old, with_refunds(old, *after, version=old.version + 1), allowed)


# An import runs until its counts reach its final total (completed, with errors if any line
# failed) or its file fails it; only a split interrupted (failed, split_interrupted) runs again.
IMPORT_ALLOWED = {
    (ImportStatus.RUNNING, ImportStatus.COMPLETED),
    (ImportStatus.RUNNING, ImportStatus.COMPLETED_WITH_ERRORS),
    (ImportStatus.RUNNING, ImportStatus.FAILED),
    (ImportStatus.FAILED, ImportStatus.RUNNING),
}


@pytest.mark.parametrize(
    ("current", "target", "allowed"),
    [(a, b, (a, b) in IMPORT_ALLOWED) for a, b in itertools.product(ImportStatus, ImportStatus)],
)
def test_an_import_status_write_must_be_in_its_table(current, target, allowed):
    assert can_transition(current, target) is allowed
