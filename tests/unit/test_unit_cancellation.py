"""Cancelling what has not shipped: the rest of a split order, chosen units of an allocated or partly
shipped order; lines, totals, shipments, reservations and the payment settled to the new total."""

from __future__ import annotations

import contextlib
import itertools
import json
from datetime import timedelta
from decimal import Decimal

import pytest

from core import hookimpl
from core.errors import (
    Backordered,
    Conflict,
    InvalidRequest,
    InvalidTransition,
    PaymentGatewayUnavailable,
    PaymentRefused,
    StaleVersion,
    TransientError,
)
from core.events import OrderEvent
from core.holds import HoldRequest, Holds
from core.ids import booking_key
from core.models import CancelRequest, LineInput, Order, OrderEdit
from core.money import Money
from core.pricing_types import Discount, PricingDraft, ShippingQuote
from core.return_models import Return
from core.returns import Returns
from core.status import OrderStatus, PaymentStatus, ReturnStatus, ShipmentStatus
from core.unit_cancellation import UnitCancellation
from plugins.tax_table import TAX_RATES_FILE_ENV
from tests.builders import NOW, location, place_order, product
from tests.fakes import run_return_workflow
from tests.unit.test_payment_truth import Removed
from tests.unit.test_returns import ask, exchange_of, receipt, returns_for
from tests.unit.world import (
    Clock,
    Died,
    RecordsBookings,
    World,
    before_the_next_write,
    build_world,
    dies_before_recording,
    ships_died,
)

S, P = OrderStatus, PaymentStatus

# MUG is only in the west and CAP only in the east, so an order with both ships in two parcels.
STOCK = [("TSHIRT", "wh-east", 10), ("MUG", "wh-west", 5), ("CAP", "wh-east", 8)]


def settled(order: Order) -> Money:
    return order.payment.captured - order.payment.refunded


def priced_as_new(world: World, order: Order, *lines: tuple[str, int]) -> Order:
    """What capture prices an order of `lines` at (the same customer and address)."""
    return world.capture.quote(
        place_order(lines=[{"sku": sku, "quantity": quantity} for sku, quantity in lines],
                    payment={"method": "test", "token": "tok_approve"})
    )  # fmt: skip


def test_cancelling_the_rest_of_a_split_order_ships_what_left_and_settles_the_payment(world):
    order = world.allocated(("MUG", 2), ("CAP", 3))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")

    done = world.actions.cancel(order.id, "the rest is not needed", actor="key_web")

    assert done.status is S.SHIPPED
    mug, cap = done.lines
    assert (mug.quantity, mug.cancelled_quantity, mug.shipped_quantity) == (2, 0, 2)
    assert (cap.quantity, cap.cancelled_quantity, cap.total) == (0, 3, Money.zero("USD"))
    assert done.totals == priced_as_new(world, done, ("MUG", 2)).totals
    assert {(s.location_id, s.status) for s in done.shipments} == {("wh-west", "shipped"), ("wh-east", "cancelled")}
    assert world.held() == {}
    assert world.level("CAP", "wh-east") == (8, 0, 8)
    assert settled(done) == done.totals.grand_total
    assert done.payment.authorized == done.payment.captured  # the rest of the authorization released
    assert world.spy.voided == [order.payment.authorization]
    entry = next(h for h in world.history(order.id) if h.type == "units_cancelled")
    assert (entry.from_status, entry.to_status, entry.detail["lines"]) == (S.PARTIALLY_SHIPPED, S.SHIPPED, {"L2": 3})


def test_the_rest_of_an_order_whose_shipment_was_delivered_ends_delivered(world):
    order = world.allocated(("MUG", 1), ("CAP", 1))
    west = world.shipment_at(order, "wh-west")
    world.actions.ship(order.id, west, None, actor="key_wh")
    world.actions.deliver(order.id, west, actor="key_wh")

    assert world.actions.cancel(order.id, "rest", actor="key_web").status is S.DELIVERED


def test_a_line_cancel_of_an_allocated_order_shrinks_its_shipment_and_reservation(world):
    order = world.allocated(("MUG", 4), ("CAP", 2))

    done = world.actions.cancel(order.id, "fewer mugs", actor="key_web", lines={"L1": 3})

    assert done.status is S.ALLOCATED
    assert [(line.quantity, line.cancelled_quantity) for line in done.lines] == [(1, 3), (2, 0)]
    assert done.totals == priced_as_new(world, done, ("MUG", 1), ("CAP", 2)).totals
    west = next(s for s in done.shipments if s.location_id == "wh-west")
    assert [(item.line_id, item.quantity) for item in west.lines] == [("L1", 1)]
    assert {(a.line_id, a.location_id, a.quantity) for a in done.allocations} == {("L1", "wh-west", 1),
                                                                                 ("L2", "wh-east", 2)}  # fmt: skip
    assert world.held_for(order.id) == {
        ("MUG", "wh-west", f"{order.id}#L1"): 1,
        ("CAP", "wh-east", f"{order.id}#L2"): 2,
    }
    assert world.level("MUG", "wh-west") == (5, 1, 4)
    for shipment in done.shipments:
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")
    shipped = world.order(order.id)
    assert (shipped.status, shipped.payment.status) == (S.SHIPPED, P.CAPTURED)
    assert shipped.payment.captured == shipped.totals.grand_total
    assert shipped.payment.authorized == shipped.payment.captured  # the last parcel released the rest
    assert world.spy.voided == [order.payment.authorization]
    assert world.level("MUG", "wh-west") == (4, 0, 4)


def test_two_line_cancels_at_once_leave_the_reservation_at_what_is_left_to_ship(world, monkeypatch):
    # Each cancel brings the reservation down after its write, conditional on what it read. The
    # second cancel read 4 reserved; a shrink to 3 (the first one's) landed before the second's
    # write (to 2), which then changed nothing (ReservationsChanged) and was decided again. The
    # reservation must still end at the 2 left, or the ship takes 3 off on_hand for the 2 that leave.
    order = world.allocated(("MUG", 4))
    units = world.actions._units
    with monkeypatch.context() as patched:
        patched.setattr(units, "_stock_step", lambda order: None)  # the first cancel's is late
        world.actions.cancel(order.id, "one fewer", actor="key_web", lines={"L1": 1})
    real = world.orders.update_with_stock
    late: list[bool] = []

    def shrunk_first(*args):
        if not late:
            late.append(True)
            world.inventory.shrink("MUG", "wh-west", f"{order.id}#L1", held=4, keep=3)
        real(*args)

    monkeypatch.setattr(world.orders, "update_with_stock", shrunk_first)

    done = world.actions.cancel(order.id, "one more fewer", actor="key_web", lines={"L1": 1})

    assert done.lines[0].quantity == 2
    assert world.held_for(order.id) == {("MUG", "wh-west", f"{order.id}#L1"): 2}
    assert world.level("MUG", "wh-west") == (5, 2, 3)
    world.actions.ship(order.id, done.shipments[0].id, None, actor="key_wh")
    assert world.level("MUG", "wh-west") == (3, 0, 3)


def test_a_line_cancel_whose_view_of_the_network_predates_a_new_location_shrinks_the_reservation_there(world):
    # As for a cancel: the API's network is cached for seconds, the workflow's is read fresh.
    actions = world.actions_behind_a_new_location("MUG", "wh-west")
    order = world.allocated(("MUG", 3))
    assert [a.location_id for a in order.allocations] == ["wh-north"]

    actions.cancel(order.id, "fewer mugs", actor="key_web", lines={"L1": 1})

    assert world.held_for(order.id) == {("MUG", "wh-north", f"{order.id}#L1"): 2}
    assert world.level("MUG", "wh-north") == (5, 2, 3)


def test_a_line_cancel_that_empties_a_pending_shipment_cancels_it_and_releases_its_reservation(world):
    order = world.allocated(("MUG", 1), ("CAP", 1))
    west = world.shipment_at(order, "wh-west")

    done = world.actions.cancel(order.id, "no mug", actor="key_web", lines={"L1": 1})

    # Kept, as a whole cancel keeps its parcels: a warehouse reading the order sees it will not go.
    assert done.shipment(west).status is ShipmentStatus.CANCELLED
    assert done.allocations[0].line_id == "L2" and len(done.allocations) == 1
    assert world.held_for(order.id) == {("CAP", "wh-east", f"{order.id}#L2"): 1}
    with pytest.raises(InvalidTransition):
        world.actions.ship(order.id, west, None, actor="key_wh")
    assert world.order(order.id) == done


def test_a_parcel_a_cancel_of_units_emptied_keeps_the_order_from_neither_shipped_nor_delivered(world):
    order = world.allocated(("MUG", 1), ("CAP", 1))
    west, east = world.shipment_at(order, "wh-west"), world.shipment_at(order, "wh-east")
    world.actions.cancel(order.id, "no mug", actor="key_web", lines={"L1": 1})

    shipped = world.actions.ship(order.id, east, None, actor="key_wh")

    assert (shipped.status, shipped.payment.status) == (S.SHIPPED, P.CAPTURED)
    assert shipped.payment.captured == shipped.totals.grand_total
    assert world.actions.deliver(order.id, east, actor="key_wh").status is S.DELIVERED
    assert world.order(order.id).shipment(west).status is ShipmentStatus.CANCELLED


def test_the_rest_of_a_partly_shipped_order_cancelled_leaves_its_parcels_cancelled_and_the_order_delivered(world):
    order = world.allocated(("MUG", 1), ("CAP", 2))
    west, east = world.shipment_at(order, "wh-west"), world.shipment_at(order, "wh-east")
    world.actions.ship(order.id, west, None, actor="key_wh")

    done = world.actions.cancel(order.id, "the rest is not needed", actor="key_web")

    assert (done.status, done.shipment(east).status) == (S.SHIPPED, ShipmentStatus.CANCELLED)
    assert world.held_for(order.id) == {}
    assert world.actions.deliver(order.id, west, actor="key_wh").status is S.DELIVERED


def test_the_first_parcel_of_three_ships_for_its_share_when_another_was_emptied_by_a_cancel():
    world = build_world([*STOCK, ("PEN", "wh-north", 5)])
    world.catalog.put_location(location("wh-north", name="North warehouse", latitude=47.61, longitude=-122.33))
    order = world.allocated(("MUG", 1), ("CAP", 1), ("PEN", 1))
    first, emptied, last = order.shipments
    (line_id,) = [item.line_id for item in emptied.lines]
    world.actions.cancel(order.id, "one item less", actor="key_web", lines={line_id: 1})

    world.actions.ship(order.id, first.id, None, actor="key_wh")
    world.actions.ship(order.id, last.id, None, actor="key_wh")

    shipped = world.order(order.id)
    assert (shipped.status, shipped.payment.status) == (S.SHIPPED, P.CAPTURED)
    assert shipped.payment.captured == shipped.totals.grand_total
    assert shipped.shipment(first.id).captured == shipped.totals.grand_total - shipped.shipment(last.id).captured
    assert shipped.shipment(emptied.id).status is ShipmentStatus.CANCELLED


def test_a_parcel_a_cancel_emptied_keeps_neither_an_edit_nor_a_reject_of_another_from_sourcing_again(world):
    order = world.allocated(("MUG", 1), ("CAP", 1))
    done = world.actions.cancel(order.id, "no mug", actor="key_web", lines={"L1": 1})

    rejected = world.actions.reject(order.id, world.shipment_at(done, "wh-east"), "no staff", actor="key_wh")

    # Sent back to be sourced: every parcel of it is withdrawn, the cancelled one with the rest.
    assert (rejected.status, rejected.shipments) == (S.AUTHORIZED, [])
    assert "wh-east" in rejected.excluded_locations


def test_a_line_cancel_of_a_partly_shipped_order_keeps_it_partly_shipped(world):
    order = world.allocated(("MUG", 1), ("CAP", 3))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")

    done = world.actions.cancel(order.id, "one cap less", actor="key_web", lines={"L2": 1})

    assert done.status is S.PARTIALLY_SHIPPED
    assert done.lines[1].quantity == 2
    east = world.shipment_at(done, "wh-east")
    world.actions.ship(order.id, east, None, actor="key_wh")
    shipped = world.order(order.id)
    assert shipped.status is S.SHIPPED and settled(shipped) == shipped.totals.grand_total


def test_cancelling_every_unit_before_anything_shipped_cancels_the_order(world):
    order = world.allocated(("MUG", 2))

    done = world.actions.cancel(order.id, "all of it", actor="key_web", lines={"L1": 2})

    assert (done.status, done.payment.status) == (S.CANCELLED, P.VOIDED)
    assert world.held_for(order.id) == {}


@pytest.mark.parametrize(
    ("lines", "said"),
    [({"L1": 3}, "L1 has 2 units"), ({"L1": 2, "L9": 1}, "no line L9")],
    ids=["more units than the line has", "no such line"],
)
def test_a_cancel_naming_more_than_an_allocated_order_has_is_422_not_a_cancel_of_the_order(world, lines, said):
    # Counting "every unit named" with >= and over the order's own lines only, a typo (3 of 2, or an
    # extra line) cancelled the whole order, its payment voided, where the same typo on a partly
    # shipped order is refused. The answer's message says which: "cannot lose that many units"
    # for a line the order lacks sent a storefront looking for a quantity that was never wrong.
    order = world.allocated(("MUG", 2))
    held = world.held()

    with pytest.raises(InvalidRequest) as raised:
        world.actions.cancel(order.id, "typo", actor="key_web", lines=lines)

    assert said in str(raised.value)

    assert world.order(order.id) == order
    assert world.held() == held


def test_a_cancel_of_more_than_a_one_unit_line_says_the_line_has_1_unit(world):
    order = world.allocated(("MUG", 1))

    with pytest.raises(InvalidRequest) as raised:
        world.actions.cancel(order.id, "typo", actor="key_web", lines={"L1": 2})

    assert str(raised.value).endswith(": L1 has 1 unit")
    assert raised.value.details == [{"field": "lines[0].quantity", "message": "L1 has 1 unit"}]


def test_units_that_shipped_are_409_and_a_line_the_order_lacks_422_both_changing_nothing(world):
    order = world.allocated(("MUG", 1), ("CAP", 1))
    shipped = world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    held = world.held()

    with pytest.raises(InvalidTransition) as raised:
        world.actions.cancel(order.id, "too late", actor="key_web", lines={"L1": 1})
    assert raised.value.code == "invalid_transition"
    with pytest.raises(InvalidRequest):
        world.actions.cancel(order.id, "no such line", actor="key_web", lines={"L9": 1})
    with pytest.raises(InvalidRequest):
        world.actions.cancel(order.id, "too many", actor="key_web", lines={"L2": 2})

    assert world.order(order.id) == shipped
    assert world.held() == held


def test_units_of_an_order_not_yet_authorized_are_cancelled_and_the_new_total_is_authorized(world):
    # API.md: a cancel with `lines` cancels only those quantities, whatever the order's status; a
    # pending order answered 409 invalid_transition.
    order_id = world.place(("MUG", 2), ("CAP", 3))

    done = world.actions.cancel(order_id, "one mug", actor="key_web", lines={"L1": 1})

    expected = priced_as_new(world, world.order(order_id), ("MUG", 1), ("CAP", 3)).totals
    assert (done.status, [line.quantity for line in done.lines]) == (S.PENDING, [1, 3])
    assert ([line.cancelled_quantity for line in done.lines], done.totals) == ([1, 0], expected)
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)
    authorized = world.order(order_id)
    assert (authorized.payment.status, authorized.payment.authorized) == (P.AUTHORIZED, expected.grand_total)
    assert world.held_for(order_id) == {
        ("MUG", "wh-west", f"{order_id}#L1"): 1,
        ("CAP", "wh-east", f"{order_id}#L2"): 3,
    }


def test_units_cancelled_while_authorized_are_neither_reserved_nor_captured(world):
    order_id = world.place(("MUG", 2), ("CAP", 3))
    world.workflow.authorize_payment(order_id, attempt=0)

    done = world.actions.cancel(order_id, "two caps", actor="key_web", lines={"L2": 2})

    assert (done.status, [line.quantity for line in done.lines]) == (S.AUTHORIZED, [2, 1])
    world.workflow.reserve_stock(order_id)
    world.workflow.create_shipments(order_id)
    allocated = world.order(order_id)
    assert world.held_for(order_id) == {
        ("MUG", "wh-west", f"{order_id}#L1"): 2,
        ("CAP", "wh-east", f"{order_id}#L2"): 1,
    }
    for shipment in allocated.shipments:
        world.actions.ship(order_id, shipment.id, None, actor="key_wh")
    shipped = world.order(order_id)
    assert shipped.status is S.SHIPPED and settled(shipped) == done.totals.grand_total
    assert shipped.payment.captured == done.totals.grand_total < allocated.payment.authorized


def test_units_cancelled_between_reserving_and_booking_leave_the_reservations_and_are_never_shipped(world):
    # Authorized with its stock reserved, its parcels not booked yet: it was 409.
    order_id = world.place(("MUG", 2), ("CAP", 3))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)

    done = world.actions.cancel(order_id, "two caps", actor="key_web", lines={"L2": 2})

    assert (done.status, [line.quantity for line in done.lines]) == (S.AUTHORIZED, [2, 1])
    assert (done.payment.status, done.payment.captured.amount, done.stock_owed) == (P.AUTHORIZED, 0, False)
    assert world.held_for(order_id) == {
        ("MUG", "wh-west", f"{order_id}#L1"): 2,
        ("CAP", "wh-east", f"{order_id}#L2"): 1,
    }
    world.workflow.create_shipments(order_id)
    allocated = world.order(order_id)
    assert sorted((s.location_id, [i.quantity for i in s.lines]) for s in allocated.shipments) == [
        ("wh-east", [1]), ("wh-west", [2])
    ]  # fmt: skip
    for shipment in allocated.shipments:
        world.actions.ship(order_id, shipment.id, None, actor="key_wh")
    shipped = world.order(order_id)
    assert shipped.status is S.SHIPPED and shipped.payment.captured == done.totals.grand_total


def test_a_hold_landing_after_a_cancel_between_reserving_and_booking_captures_nothing_and_releases_the_units(
    world, monkeypatch
):
    # A person's hold lands between the cancel's write and its function's stock and payment steps:
    # the order, on hold to be released to `authorized`, still has its parcels to book from its
    # allocations. Those steps took it for one with nothing left to ship: the whole total captured and
    # the authorization voided before a parcel was made, and the cancelled caps left reserved.
    # (h631's survivor ru-nostatus: Order.reserved_unbooked without its status condition answered
    # this order right, which only its two callers here need.)
    order_id = world.place(("MUG", 2), ("CAP", 3))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)
    real = UnitCancellation._stock_step

    def held_first(self: UnitCancellation, order: Order) -> None:
        Holds(world.orders, clock=lambda: NOW).hold(order_id, HoldRequest(reason="other"), actor="key_ops")
        real(self, world.order(order_id))

    monkeypatch.setattr(UnitCancellation, "_stock_step", held_first)
    world.actions.cancel(order_id, "two caps", actor="key_web", lines={"L2": 2})

    held = world.order(order_id)
    assert (held.status, held.hold.resume_to) == (S.ON_HOLD, S.AUTHORIZED)
    assert (held.payment.status, held.payment.captured.amount) == (P.AUTHORIZED, 0)
    assert world.held_for(order_id) == {
        ("MUG", "wh-west", f"{order_id}#L1"): 2,
        ("CAP", "wh-east", f"{order_id}#L2"): 1,
    }


def test_a_cancel_landing_while_the_order_is_being_authorized_has_the_new_total_authorized(world, monkeypatch):
    order_id = world.place(("MUG", 2))
    cancelled: list[Order] = []
    before_the_next_write(world, monkeypatch, lambda: cancelled.append(
        world.actions.cancel(order_id, "one mug", actor="key_web", lines={"L1": 1})))  # fmt: skip

    with pytest.raises(TransientError):  # its write lost: Step Functions runs it again
        world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.authorize_payment(order_id, attempt=1)

    done = world.order(order_id)
    assert (done.payment.status, done.payment.authorized) == (P.AUTHORIZED, cancelled[0].totals.grand_total)
    # Asked under a new key: the old key's authorization, for the old total, was voided.
    assert len(set(world.spy.authorized)) == 2 and world.spy.voided == world.spy.authorized[:1]
    assert done.payment.authorization == world.spy.authorized[1]


def test_a_cancel_landing_while_the_order_is_being_reserved_leaves_only_what_is_left_reserved(world, monkeypatch):
    order_id = world.place(("MUG", 2), ("CAP", 3))
    world.workflow.authorize_payment(order_id, attempt=0)
    before_the_next_write(world, monkeypatch, lambda: world.actions.cancel(
        order_id, "one cap", actor="key_web", lines={"L2": 1}))  # fmt: skip

    with pytest.raises(TransientError):  # its write lost: Step Functions runs it again
        world.workflow.reserve_stock(order_id)
    world.workflow.reserve_stock(order_id)

    assert world.held_for(order_id) == {
        ("MUG", "wh-west", f"{order_id}#L1"): 2,
        ("CAP", "wh-east", f"{order_id}#L2"): 2,
    }
    assert [a.quantity for a in world.order(order_id).allocations if a.line_id == "L2"] == [2]


def test_units_cancelled_on_hold_after_an_edit_give_back_the_stock_they_held(world):
    # Edited, the order went back to `authorized` keeping its units for the workflow, which the
    # hold puts off: the units cancelled would stay reserved for as long as the hold lasts.
    order = world.allocated(("MUG", 2))
    moved = OrderEdit.model_validate({"shipping_address": {**order.shipping_address.model_dump(), "line2": "Apt 4"}})
    edited = world.actions.edit(order.id, order.version, moved, "key_cs")  # an edit that changes nothing is none
    holds = Holds(world.orders, clock=lambda: NOW, inventory=world.inventory, catalog=world.catalog)
    held = holds.hold(order.id, HoldRequest(reason="customer_request"), actor="key_ops")
    assert (edited.status, held.status, world.held_for(order.id)) == (S.AUTHORIZED, S.ON_HOLD, {
        ("MUG", "wh-west", f"{order.id}#L1"): 2})  # fmt: skip

    done = world.actions.cancel(order.id, "one mug", actor="key_web", lines={"L1": 1})

    assert (done.status, [line.quantity for line in done.lines]) == (S.ON_HOLD, [1])
    assert world.held_for(order.id) == {("MUG", "wh-west", f"{order.id}#L1"): 1}
    assert world.level("MUG", "wh-west") == (5, 1, 4)


def test_an_authorization_an_edit_died_recording_is_voided_by_a_cancel_of_units_before_sourcing(world, monkeypatch):
    # The PATCH died after the gateway authorized the grown total: the hold on the customer's card
    # is the order's to void, as a cancel of allocated units voids it.
    order_id = world.place(("MUG", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    authorized = world.order(order_id)
    dies_before_recording(world, monkeypatch, "edited")
    with pytest.raises(Died):
        world.actions.edit(order_id, authorized.version, OrderEdit(lines=[LineInput(sku="MUG", quantity=3)]), "key_cs")
    assert world.order(order_id).authorization_requested is not None and len(world.spy.authorized) == 2

    done = world.actions.cancel(order_id, "one mug", actor="key_web", lines={"L1": 1})

    assert (done.status, done.lines[0].quantity, done.authorization_requested) == (S.AUTHORIZED, 1, None)
    assert done.payment.authorization == authorized.payment.authorization
    assert world.spy.voided == [world.spy.authorized[1]]  # the edit's, asked for again under its key to void it


def test_every_unit_of_a_pending_order_named_cancels_the_order(world):
    order_id = world.place(("MUG", 2))

    done = world.actions.cancel(order_id, "all of it", actor="key_web", lines={"L1": 2})

    assert done.status is S.CANCELLED


def test_a_shipped_order_without_cancelled_units_still_refuses_a_cancel(world):
    order = world.allocated(("MUG", 1))
    world.actions.ship(order.id, order.shipments[0].id, None, actor="key_wh")
    with pytest.raises(InvalidTransition):
        world.actions.cancel(order.id, "too late", actor="key_web")


def test_a_settlement_the_gateway_could_not_do_is_finished_by_repeating_the_cancel(world):
    order = world.allocated(("MUG", 2), ("CAP", 3))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    world.gateway.script("void", "transient")

    first = world.actions.cancel(order.id, "rest", actor="key_web")

    assert first.status is S.SHIPPED and first.payment.authorized > first.payment.captured
    assert [h.type for h in world.history(order.id)][-3:] == ["payment_void_failed"] * 3
    world.gateway.script("void", "approve")
    again = world.actions.cancel(order.id, "rest", actor="key_web")
    assert again.payment.authorized == again.payment.captured
    assert settled(again) == again.totals.grand_total


def test_a_capture_of_the_rest_the_gateway_could_not_make_is_made_when_the_parcel_is_delivered(world):
    # The shipping was the east parcel's share: cancelled with it, it is captured after all, as the
    # total that is left says. The gateway is down then; the order must not end delivered unpaid.
    order = world.allocated(("MUG", 2), ("CAP", 3))
    west = world.shipment_at(order, "wh-west")
    world.actions.ship(order.id, west, None, actor="key_wh")
    world.gateway.script("capture", "transient", "transient", "transient", "approve")
    shipped = world.actions.cancel(order.id, "rest", actor="key_web")
    assert shipped.status is S.SHIPPED and settled(shipped) < shipped.totals.grand_total

    delivered = world.actions.deliver(order.id, west, actor="key_carrier")

    assert delivered.status is S.DELIVERED
    assert delivered.payment.status is P.CAPTURED
    assert settled(delivered) == delivered.totals.grand_total
    assert delivered.payment.authorized == delivered.payment.captured
    assert delivered == world.order(order.id)


def test_a_release_the_gateway_refuses_is_recorded_once_however_often_the_parcel_is_reported_delivered():
    # The rest of the order was cancelled; the authorization's rest cannot be released (the gateway
    # refuses the void). Before: every ship repeated, every delivery a carrier reported again and
    # every cancel repeated added one more payment_void_failed entry, without bound.
    world = build_world(STOCK)
    order = world.allocated(("MUG", 1), ("CAP", 3), token="tok_void_decline")
    west = world.shipment_at(order, "wh-west")
    world.actions.ship(order.id, west, None, actor="key_wh")
    world.actions.cancel(order.id, "rest", actor="key_web")
    assert [e.type for e in world.history(order.id)][-1] == "payment_void_failed"
    entries = [len(world.history(order.id))]

    for _ in range(3):
        world.actions.ship(order.id, west, None, actor="key_wh")
        entries.append(len(world.history(order.id)))
    for _ in range(3):
        world.actions.deliver(order.id, west, actor="key_carrier")
        entries.append(len(world.history(order.id)))
    for _ in range(3):
        world.actions.cancel(order.id, "rest", actor="key_web")
        entries.append(len(world.history(order.id)))

    # A new actor's first refusal is recorded in its name, then no more; a delivery asks no refused
    # void at all (its one entry is the delivery itself).
    assert [b - a for a, b in itertools.pairwise(entries)] == [1, 0, 0, 1, 0, 0, 1, 0, 0]
    after = world.order(order.id)
    assert after.payment.authorized > after.payment.captured  # still held: for a person


def test_a_release_refused_again_by_a_ship_and_a_delivery_repeated_in_turn_is_recorded_once_by_each():
    # The warehouse system repeats its ship on a loop and the carrier's tracking reports the
    # delivery again and again: the two loops take turns. Before: a refusal was skipped only when
    # the history's last entry was that actor's, so each repeat, following the other's, added one
    # more payment_void_failed entry, without bound.
    world = build_world(STOCK)
    order = world.allocated(("MUG", 1), ("CAP", 3), token="tok_void_decline")
    west = world.shipment_at(order, "wh-west")
    world.actions.ship(order.id, west, None, actor="key_wh")
    world.actions.cancel(order.id, "rest", actor="key_web")
    world.actions.deliver(order.id, west, actor="key_carrier")
    world.actions.ship(order.id, west, None, actor="key_wh")
    before = world.history(order.id)

    for _ in range(10):
        world.actions.deliver(order.id, west, actor="key_carrier")
        world.actions.ship(order.id, west, None, actor="key_wh")

    assert world.history(order.id) == before
    # The delivery asks no refused void (test_a_delivery_does_not_ask_again_a_release_the_gateway_refused);
    # the ship's loop records its refusal once.
    assert [(e.type, e.actor) for e in before[-2:]] == [("shipment_delivered", "key_carrier"),
                                                        ("payment_void_failed", "key_wh")]  # fmt: skip


def test_a_release_refused_again_once_its_payment_plugin_is_back_is_recorded():
    # A ship repeated on a loop is refused the release; the payment plugin is taken out (the
    # repeat notes `no_plugin`), then put back, and the gateway refuses again. Before: the
    # repeat's refusal was matched past the `no_plugin` entry with the first refusal and not
    # recorded, so the history ended saying no plugin took the method after the gateway had
    # answered again. A run of the same answer only is matched: a new answer is recorded.
    removed = Removed()
    world = build_world(STOCK, removed)
    order = world.allocated(("MUG", 1), ("CAP", 3), token="tok_void_decline")
    west = world.shipment_at(order, "wh-west")
    world.actions.ship(order.id, west, None, actor="key_wh")
    world.actions.cancel(order.id, "rest", actor="key_web")
    for gone in (False, True, False, False):
        removed.gone = gone
        world.actions.ship(order.id, west, None, actor="key_wh")

    failed = [(e.actor, (e.detail or {}).get("kind")) for e in world.history(order.id)
              if e.type is OrderEvent.PAYMENT_VOID_FAILED]  # fmt: skip
    assert failed == [("key_web", "refused"), ("key_wh", "refused"), ("key_wh", "no_plugin"), ("key_wh", "refused")]


@pytest.mark.parametrize("settled_by", ["last_ship", "cancel_of_the_rest"])
def test_a_delivery_does_not_ask_again_a_release_the_gateway_refused(settled_by):
    # Before: once the settling call (the last parcel's ship of an order that lost units, or a
    # cancel of the rest) was refused the void of the authorization's rest, the carrier's first
    # delivery report asked it again under the same key: the gateway answered the same refusal,
    # the history gained a second payment_void_failed (in the carrier's name) and
    # VoidsNotMadeAlarm a second point for the one hold the first had already called a person to
    # release. A delivery changes nothing the gateway's answer depends on: it asks no refused void.
    world = build_world(STOCK)
    order = world.allocated(("MUG", 2), ("CAP", 3))
    west, east = world.shipment_at(order, "wh-west"), world.shipment_at(order, "wh-east")
    if settled_by == "last_ship":
        world.actions.cancel(order.id, "one cap fewer", actor="key_web", lines={"L2": 1})
    world.actions.ship(order.id, west, None, actor="key_wh")
    world.gateway.script("void", "refuse")
    if settled_by == "last_ship":
        world.actions.ship(order.id, east, None, actor="key_wh")
    else:
        world.actions.cancel(order.id, "the rest", actor="key_web")
    assert world.gateway.keys("void") == [f"{order.payment.authorization}:void"]

    delivered = [world.actions.deliver(order.id, west, actor="key_carrier") for _ in range(3)]
    if settled_by == "last_ship":
        delivered = [world.actions.deliver(order.id, east, actor="key_carrier") for _ in range(3)]

    assert delivered[-1].status is OrderStatus.DELIVERED
    assert delivered[-1].payment.authorized > delivered[-1].payment.captured  # still held: for a person
    assert world.gateway.keys("void") == [f"{order.payment.authorization}:void"]  # asked once
    refusals = [e for e in world.history(order.id) if e.type is OrderEvent.PAYMENT_VOID_FAILED]
    assert [(e.detail["kind"], e.actor) for e in refusals] == [
        ("refused", "key_wh" if settled_by == "last_ship" else "key_web")
    ]


def test_a_delivery_still_asks_a_release_the_gateway_was_down_for():
    # What a gateway down for the void left is no answer: the delivery asks it again, and the
    # authorization's rest is released.
    world = build_world(STOCK)
    order = world.allocated(("MUG", 2), ("CAP", 3))
    world.actions.cancel(order.id, "one cap fewer", actor="key_web", lines={"L2": 1})
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    world.gateway.script("void", "transient")
    east = world.shipment_at(order, "wh-east")
    world.actions.ship(order.id, east, None, actor="key_wh")
    world.gateway.script("void", "approve")

    delivered = world.actions.deliver(order.id, east, actor="key_carrier")

    assert delivered.payment.authorized == delivered.payment.captured == delivered.totals.grand_total
    assert world.spy.voided == [order.payment.authorization]
    assert not delivered.settlement_owed


class PerUnitShipping:
    """Shipping that costs 2.00 a unit: cancelled units make it cheaper."""

    @hookimpl
    def oms_shipping_quotes(self, draft: PricingDraft, address: object) -> list[ShippingQuote]:
        units = sum(line.quantity for line in draft.lines)
        return [ShippingQuote(method="per_unit", amount=Money.of(2 * units, draft.currency))]


def test_what_was_captured_beyond_the_new_total_is_refunded_as_a_cancellation():
    world = build_world(STOCK, PerUnitShipping())
    order = world.allocated(("MUG", 1), ("CAP", 3), shipping_method="per_unit")
    east = world.shipment_at(order, "wh-east")
    assert order.shipments[0].id == east  # the first shipment's capture carries all the shipping (8.00)
    world.actions.ship(order.id, east, None, actor="key_wh")
    captured = world.order(order.id).payment.captured

    done = world.actions.cancel(order.id, "no mug", actor="key_web", lines={"L1": 1})

    assert done.status is S.SHIPPED and done.totals.shipping == Money.of("6.00", "USD")
    over = captured - done.totals.grand_total
    assert over == Money.of("2.00", "USD")
    assert [(r.kind, r.status, r.amount) for r in done.payment.refunds] == [("cancellation", "succeeded", over)]
    assert settled(done) == done.totals.grand_total
    assert done.payment.status is P.PARTIALLY_REFUNDED
    assert world.actions.cancel(order.id, "no mug", actor="key_web") == done  # a repeat refunds nothing more


def test_an_over_capture_refund_the_gateway_keeps_refusing_is_asked_a_few_times_then_left_to_a_person():
    # Before: every repeat of the ship and every delivery a carrier's tracking reported again asked
    # the refund once more under a new key, each refused one a failed refund kept on the order and
    # three history entries, without bound (the order's item fills, then every write fails).
    world = build_world(STOCK, PerUnitShipping())
    order = world.allocated(("MUG", 1), ("CAP", 3), shipping_method="per_unit")
    east = world.shipment_at(order, "wh-east")
    world.actions.ship(order.id, east, None, actor="key_wh")
    world.gateway.script("refund", "refuse")
    world.actions.cancel(order.id, "no mug", actor="key_web", lines={"L1": 1})

    for _ in range(5):
        world.actions.ship(order.id, east, None, actor="key_wh")
        world.actions.deliver(order.id, east, actor="key_carrier")

    after = world.order(order.id)
    assert [(r.kind, r.status) for r in after.payment.refunds] == [("cancellation", "failed")] * 3
    assert settled(after) > after.totals.grand_total  # for a person: an appeasement gives it back
    # The person is told once, by the refusal that left it to them (an ERROR line, and the entry
    # the business metrics count for OverCapturesNotRefundedAlarm).
    told = [e for e in world.history(order.id) if e.type is OrderEvent.OVER_CAPTURE_NOT_REFUNDED]
    assert [(e.actor, e.detail["refusals"], e.detail["amount"]) for e in told] == [
        ("key_carrier", 3, after.payment.refunds[-1].amount.model_dump(mode="json"))
    ]
    entries = len(world.history(order.id))
    world.actions.deliver(order.id, east, actor="key_carrier")
    assert len(world.history(order.id)) == entries
    world.gateway.script("refund", "approve")
    given = world.refunds.issue_refund(
        order.id, settled(after) - after.totals.grand_total, "the cancelled mug's shipping", "cs-1", "key_cs"
    )
    assert given.status == "succeeded" and settled(world.order(order.id)) == after.totals.grand_total
    again = world.actions.deliver(order.id, east, actor="key_carrier")
    assert len(again.payment.refunds) == 4  # the appeasement gave it: nothing refunds it twice


def test_the_runbooks_appeasement_of_an_over_capture_left_to_a_person_is_not_refunded_again_by_a_return():
    # OverCapturesNotRefundedAlarm's recovery: the amount given back as an appeasement. A return of
    # everything afterwards, a delivery reported again and a cancel repeated refund what is owed
    # and nothing of the appeased amount a second time.
    world = build_world(STOCK, PerUnitShipping())
    order = world.allocated(("MUG", 1), ("CAP", 3), shipping_method="per_unit")
    east = world.shipment_at(order, "wh-east")
    world.actions.ship(order.id, east, None, actor="key_wh")
    world.gateway.script("refund", "refuse")
    world.actions.cancel(order.id, "no mug", actor="key_web", lines={"L1": 1})
    for _ in range(3):
        world.actions.deliver(order.id, east, actor="key_carrier")
    left = world.order(order.id)
    over = left.payment.captured - left.totals.grand_total
    assert [(r.status, r.amount) for r in left.payment.refunds] == [("failed", over)] * 3
    world.gateway.script("refund", "approve")
    world.refunds.issue_refund(order.id, over, "the cancelled mug's shipping", "cs-1", "key_cs")
    returns, _ = returns_for(world, Clock(NOW + timedelta(days=3)))
    item = returns.request(order.id, ask(("L2", 3, "damaged")), actor="key_cs")
    returns.receive(item.id, receipt("wh-east", ("L2", 3, "resellable")), "key_wh")
    run_return_workflow(returns, item.id, "returns-workflow")
    world.actions.deliver(order.id, east, actor="key_carrier")
    world.actions.cancel(order.id, "no mug", actor="key_web")

    done = world.order(order.id)
    assert [(r.kind, r.status, r.amount) for r in done.payment.refunds][3:] == [
        ("appeasement", "succeeded", over),
        ("return", "succeeded", left.totals.grand_total),
    ]
    assert done.payment.refunded == done.payment.captured  # everything back once, nothing beyond
    assert (done.status, done.payment.status) == (S.RETURNED, P.REFUNDED)


def three_mugs_for(sku: str) -> tuple[World, Returns, Order, Order, str]:
    """A shipped `sku` exchanged for three MUGs (two at wh-west, one at wh-east), the credit paying
    for part: the world, the returns service, the order, the replacement and its west
    parcel, shipped."""
    world, returns = three_days_on([("MUG", "wh-west", 2), ("MUG", "wh-east", 1), (sku, "wh-west", 1)])
    order = world.allocated((sku, 1))
    world.actions.ship(order.id, order.shipments[0].id, None, actor="key_wh")
    item = returns.request(order.id, exchange_of("L1", 1, ("MUG", 3)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    replacement = world.run(run_return_workflow(returns, item.id, actor="key_wh").exchange_order_id or "")
    west = world.shipment_at(replacement, "wh-west")
    world.actions.ship(replacement.id, west, None, actor="key_wh")
    return world, returns, order, replacement, west


def test_the_runbooks_appeasement_of_a_replacements_over_capture_left_to_a_person_is_not_refunded_again():
    # A TSHIRT is exchanged for three MUGs: the credit pays for most, the two shipped from the west
    # capture 23.78, and the third is cancelled: the card holds 13.41 beyond what the credit leaves
    # to pay, and the gateway refuses that refund three times. The person gives it back as an
    # appeasement, which leaves 10.37 refundable. Before: the next delivery reported asked the
    # refund again for those 10.37 (a new amount, capped by what was refundable) and the credit gave
    # 3.04 back for them: the customer got 13.41 twice. A MUG returned afterwards is refunded whole.
    from core.refunds import cumulative_share

    world, returns, order, replacement, west = three_mugs_for("TSHIRT")
    world.gateway.script("refund", "refuse")
    world.actions.cancel(replacement.id, "no more mugs", actor="key_cs", lines={"L1": 1})
    for _ in range(2):
        world.actions.deliver(replacement.id, west, actor="key_carrier")
    left = world.order(replacement.id)
    over = Money.of("13.41", "USD")
    assert [(r.status, r.amount) for r in left.payment.refunds] == [("failed", over)] * 3
    world.gateway.script("refund", "approve")
    world.refunds.issue_refund(replacement.id, over, "the cancelled mug", "cs-1", "key_cs")

    world.actions.deliver(replacement.id, west, actor="key_carrier")
    world.actions.cancel(replacement.id, "no more mugs", actor="key_cs")

    paid = [world.order(order.id), world.order(replacement.id)]
    assert [r.kind for r in paid[1].payment.refunds] == ["cancellation"] * 3 + ["appeasement"]
    assert paid[0].payment.refunds == []  # the credit pays for the MUGs kept, nothing of it is left
    kept = sum((o.payment.captured - o.payment.refunded for o in paid), Money.zero("USD"))
    assert kept == paid[0].totals.shipping + paid[1].totals.shipping + paid[1].lines[0].total
    mug = returns.request(replacement.id, ask(("L1", 1, None)), actor="key_cs")
    returns.receive(mug.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    run_return_workflow(returns, mug.id, actor="key_wh")
    world.actions.deliver(replacement.id, west, actor="key_carrier")
    paid = [world.order(order.id), world.order(replacement.id)]
    back = world.returns.get(mug.id).refund
    assert back == cumulative_share(paid[1].lines[0], 1)
    kept = sum((o.payment.captured - o.payment.refunded for o in paid), Money.zero("USD"))
    assert kept == paid[0].totals.shipping + paid[1].totals.shipping + paid[1].lines[0].total - back


class ShippingPerUnitOf20:
    """Shipping that costs 20.00 a unit: a PEN cancelled takes more off the shipping than it cost."""

    @hookimpl
    def oms_shipping_quotes(self, draft: PricingDraft, address: object) -> list[ShippingQuote]:
        units = sum(line.quantity for line in draft.lines)
        return [ShippingQuote(method="per_unit", amount=Money.of(20 * units, draft.currency))]


def over_capture_left_to_a_person_with_pens_to_ship() -> tuple[World, Order, str]:
    """A CAP shipped from the east with all the shipping (80.00 for four units), two PENs still to
    ship from the west after a third was cancelled: the payment holds 12.86 beyond the total, and
    the gateway refused that refund three times (the cancel's Idempotency-Key retried twice): it
    is left to a person. The order (88.33 captured, 75.47 its total) and the east parcel."""
    world = build_world([("PEN", "wh-west", 5), ("CAP", "wh-east", 8)], ShippingPerUnitOf20())
    order = world.allocated(("CAP", 1), ("PEN", 3), shipping_method="per_unit")
    east = world.shipment_at(order, "wh-east")
    world.actions.ship(order.id, east, None, actor="key_wh")
    world.gateway.script("refund", "refuse")
    for _ in range(3):
        world.actions.cancel(order.id, "one pen", actor="key_web", lines={"L2": 1}, request_key="k-1")
    left = world.order(order.id)
    assert [(r.kind, r.status, r.amount) for r in left.payment.refunds] == [
        ("cancellation", "failed", Money.of("12.86", "USD"))
    ] * 3
    assert (left.status, left.payment.captured, left.totals.grand_total) == (
        S.PARTIALLY_SHIPPED, Money.of("88.33", "USD"), Money.of("75.47", "USD"),
    )  # fmt: skip
    world.gateway.script("refund", "approve")
    return world, left, east


def test_an_appeased_over_capture_is_not_refunded_again_when_a_later_cancel_raises_it():
    # The runbook's appeasement of the 12.86 left to a person, then the last two PENs cancelled: the
    # payment holds 60.00 beyond the new total (28.33) in all. Before: the cancel asked the gateway for
    # all 60.00, the appeased 12.86 with it: the customer was paid it back twice (keeping 15.47 of
    # an order that costs 28.33). Now it asks the 47.14 not given back yet, and nothing more after.
    world, left, east = over_capture_left_to_a_person_with_pens_to_ship()
    over = Money.of("12.86", "USD")
    given = world.refunds.issue_refund(left.id, over, "the cancelled pen's shipping", "cs-1", "key_cs")
    assert given.status == "succeeded"
    assert world.order(left.id).payment.refunds[-1].over_capture == over

    done = world.actions.cancel(left.id, "no more pens", actor="key_web")

    assert done.status is S.SHIPPED and done.totals.grand_total == Money.of("28.33", "USD")
    assert [amount for _, amount, _ in world.spy.refunded] == [over, Money.of("47.14", "USD")]
    assert settled(done) == done.totals.grand_total
    world.actions.cancel(left.id, "no more pens", actor="key_web")
    world.actions.deliver(left.id, east, actor="key_carrier")
    again = world.refunds.issue_refund(left.id, over, "the cancelled pen's shipping", "cs-1", "key_cs")
    assert again == given  # the appeasement's retry is the same refund, counted once
    assert world.order(left.id).payment.refunds == done.payment.refunds
    assert len(world.spy.refunded) == 2


def test_two_appeasements_of_an_over_capture_count_only_what_it_held_and_the_rest_is_goodwill():
    # 5.00, then 10.00: the second gives back the 7.86 still left to the person and 2.14 of goodwill.
    # The cancel of the last PENs refunds what is held beyond the total less the 12.86 appeased: the
    # customer keeps the order's total less the goodwill, and nothing is refunded twice.
    world, left, _ = over_capture_left_to_a_person_with_pens_to_ship()
    world.refunds.issue_refund(left.id, Money.of("5.00", "USD"), "part of the shipping", "cs-1", "key_cs")
    world.refunds.issue_refund(left.id, Money.of("10.00", "USD"), "the rest, and sorry", "cs-2", "key_cs")
    appeased = world.order(left.id).payment.refunds[3:]
    assert [(r.kind, r.amount, r.over_capture) for r in appeased] == [
        ("appeasement", Money.of("5.00", "USD"), Money.of("5.00", "USD")),
        ("appeasement", Money.of("10.00", "USD"), Money.of("7.86", "USD")),
    ]

    done = world.actions.cancel(left.id, "no more pens", actor="key_web")

    assert [r.amount for r in done.payment.refunds[5:]] == [Money.of("47.14", "USD")]
    assert settled(done) == done.totals.grand_total - Money.of("2.14", "USD")


def test_a_partly_appeased_over_capture_leaves_the_rest_to_the_person_and_a_later_cancel_asks_it():
    # 5.00 appeased of the 12.86: the 7.86 left is not asked again (a repeat of the cancel's request),
    # and the cancel of the last PENs asks everything held beyond the total but those 5.00.
    world, left, _ = over_capture_left_to_a_person_with_pens_to_ship()
    world.refunds.issue_refund(left.id, Money.of("5.00", "USD"), "part of the shipping", "cs-1", "key_cs")
    world.actions.cancel(left.id, "one pen", actor="key_web", lines={"L2": 1}, request_key="k-1")
    assert len(world.order(left.id).payment.refunds) == 4

    done = world.actions.cancel(left.id, "no more pens", actor="key_web")

    assert [r.amount for r in done.payment.refunds[4:]] == [Money.of("55.00", "USD")]
    assert settled(done) == done.totals.grand_total


def test_an_appeasement_the_gateway_refused_gives_back_nothing_of_an_over_capture():
    # Refused, the appeasement moved no money: the 12.86 stays left to the person, and the cancel of
    # the last PENs asks all 60.00 held beyond the new total.
    world, left, _ = over_capture_left_to_a_person_with_pens_to_ship()
    world.gateway.script("refund", "refuse")
    refused = world.refunds.issue_refund(left.id, Money.of("12.86", "USD"), "the pen's shipping", "cs-1", "key_cs")
    assert refused.status == "failed"
    world.actions.cancel(left.id, "one pen", actor="key_web", lines={"L2": 1}, request_key="k-1")
    assert len(world.order(left.id).payment.refunds) == 4  # still left to the person: not asked
    world.gateway.script("refund", "approve")

    done = world.actions.cancel(left.id, "no more pens", actor="key_web")

    assert [(r.status, r.amount) for r in done.payment.refunds[4:]] == [("succeeded", Money.of("60.00", "USD"))]
    assert settled(done) == done.totals.grand_total


def test_an_appeasement_left_pending_by_an_outage_counts_once_whichever_finishes_it():
    # The gateway down while the appeasement is asked: it holds its amount, pending, and the cancel
    # of the last PENs asks only what it does not give back; the cancel's repeat then finishes it.
    world, left, _ = over_capture_left_to_a_person_with_pens_to_ship()
    world.gateway.script("refund", "transient", "transient", "transient", "approve")
    with pytest.raises(PaymentGatewayUnavailable):
        world.refunds.issue_refund(left.id, Money.of("12.86", "USD"), "the pen's shipping", "cs-1", "key_cs")
    assert world.order(left.id).payment.refunds[-1].status == "pending"

    done = world.actions.cancel(left.id, "no more pens", actor="key_web")
    done = world.actions.cancel(left.id, "no more pens", actor="key_web")

    assert [(r.kind, r.status, r.amount) for r in done.payment.refunds[3:]] == [
        ("appeasement", "succeeded", Money.of("12.86", "USD")),
        ("cancellation", "succeeded", Money.of("47.14", "USD")),
    ]
    assert settled(done) == done.totals.grand_total


def test_an_appeasement_while_a_settlement_refund_is_pending_is_refused_naming_it():
    # The 12.86 was left to a person; before they act the last PENs are cancelled while the gateway
    # is down: the settlement's refund of all 60.00 now held beyond the total is pending. Before:
    # the person's appeasement of the 12.86 was taken as goodwill (nothing is left to a person while
    # a settlement is on its way), and once the gateway came back the 60.00 went through too: the
    # customer had the 12.86 twice. Now it is 409 naming the pending refund, and nothing is written.
    world, left, _ = over_capture_left_to_a_person_with_pens_to_ship()
    world.gateway.script("refund", "transient")
    world.actions.cancel(left.id, "no more pens", actor="key_web")
    pending = world.order(left.id).payment.refunds[-1]
    assert (pending.kind, pending.status, pending.amount) == ("cancellation", "pending", Money.of("60.00", "USD"))
    before = world.order(left.id)

    with pytest.raises(Conflict) as refused:
        world.refunds.issue_refund(left.id, Money.of("12.86", "USD"), "the cancelled pen's shipping", "cs-1", "key_cs")

    assert refused.value.code == "settlement_refund_pending"
    assert [d.get("refund_id") for d in refused.value.details] == [pending.id]
    assert pending.id in refused.value.message and "60.00" in refused.value.message
    assert world.order(left.id) == before  # nothing written
    world.gateway.script("refund", "approve")
    done = world.actions.cancel(left.id, "no more pens", actor="key_web")  # finishes it
    assert [(r.kind, r.status) for r in done.payment.refunds[3:]] == [("cancellation", "succeeded")]
    assert settled(done) == done.totals.grand_total == Money.of("28.33", "USD")
    # Answered, an appeasement is taken again: goodwill now, as nothing is owed.
    given = world.refunds.issue_refund(left.id, Money.of("5.00", "USD"), "the parcel came late", "cs-2", "key_cs")
    assert (given.status, world.order(left.id).payment.refunds[-1].over_capture) == ("succeeded", None)


def test_an_appeasement_made_before_a_settlement_refund_went_pending_is_answered_again_under_its_key():
    # A client retrying the appeasement it made before the cancel (its answer lost) gets that
    # refund, not 409: only a new appeasement waits for the settlement's answer.
    world, left, _ = over_capture_left_to_a_person_with_pens_to_ship()
    over = Money.of("12.86", "USD")
    first = world.refunds.issue_refund(left.id, over, "the pen's shipping", "cs-1", "key_cs", same_request=True)
    world.gateway.script("refund", "transient")
    world.actions.cancel(left.id, "no more pens", actor="key_web")
    assert world.order(left.id).payment.refunds[-1].status == "pending"

    again = world.refunds.issue_refund(left.id, over, "the pen's shipping", "cs-1", "key_cs", same_request=True)

    assert again == first and first.status == "succeeded"


def test_goodwill_given_while_the_settlement_is_still_asked_is_not_taken_as_the_over_capture():
    # The gateway refused the settlement's refund of the 12.86 once: the OMS asks it again (a cancel,
    # ship or delivery repeated), nothing is left to a person. A 5.00 appeasement for a late parcel
    # is then goodwill. Before: it was counted as giving back 5.00 of the 12.86, the repeat asked
    # only 7.86, and the customer ended with 12.86 back instead of 17.86 (the goodwill never paid).
    world = build_world([("PEN", "wh-west", 5), ("CAP", "wh-east", 8)], ShippingPerUnitOf20())
    order = world.allocated(("CAP", 1), ("PEN", 3), shipping_method="per_unit")
    world.actions.ship(order.id, world.shipment_at(order, "wh-east"), None, actor="key_wh")
    world.gateway.script("refund", "refuse")
    world.actions.cancel(order.id, "one pen", actor="key_web", lines={"L2": 1}, request_key="k-1")
    world.gateway.script("refund", "approve")
    goodwill = Money.of("5.00", "USD")
    given = world.refunds.issue_refund(order.id, goodwill, "the parcel came late", "cs-1", "key_cs")
    assert given.status == "succeeded"
    assert world.order(order.id).payment.refunds[-1].over_capture is None

    done = world.actions.cancel(order.id, "one pen", actor="key_web", lines={"L2": 1}, request_key="k-1")

    assert [(r.kind, r.status, r.amount) for r in done.payment.refunds] == [
        ("cancellation", "failed", Money.of("12.86", "USD")),
        ("appeasement", "succeeded", goodwill),
        ("cancellation", "succeeded", Money.of("12.86", "USD")),
    ]
    assert settled(done) == done.totals.grand_total - goodwill


def test_the_runbooks_appeasement_after_a_later_cancel_was_refused_still_gives_back_what_the_person_was_told():
    # The 12.86 was left to a person (OverCapturesNotRefundedAlarm). Before they act, the last PENs
    # are cancelled: the settlement asks all 60.00 now held beyond the total, and the gateway refuses
    # it once. The person then follows the runbook: an appeasement of the 12.86 they were told of.
    # Before: with a settlement asked again since, it was taken as goodwill (over_capture null), the
    # cancel's repeat asked the whole 60.00 and the customer had the 12.86 twice (kept 15.47 of an
    # order costing 28.33). Now it gives back those 12.86, and the repeat asks the 47.14 left.
    world, left, east = over_capture_left_to_a_person_with_pens_to_ship()
    world.gateway.script("refund", "refuse")
    world.actions.cancel(left.id, "no more pens", actor="key_web", request_key="k-2")
    world.gateway.script("refund", "approve")
    over = Money.of("12.86", "USD")

    given = world.refunds.issue_refund(left.id, over, "the cancelled pen's shipping", "cs-1", "key_cs")
    done = world.actions.cancel(left.id, "no more pens", actor="key_web", request_key="k-2")
    world.actions.deliver(left.id, east, actor="key_carrier")

    assert given.status == "succeeded"
    assert [(r.kind, r.status, r.amount, r.over_capture) for r in done.payment.refunds[3:]] == [
        ("cancellation", "failed", Money.of("60.00", "USD"), None),
        ("appeasement", "succeeded", over, over),
        ("cancellation", "succeeded", Money.of("47.14", "USD"), None),
    ]
    assert settled(done) == done.totals.grand_total == Money.of("28.33", "USD")
    assert world.order(left.id).payment.refunds == done.payment.refunds


def test_goodwill_after_a_later_cancel_was_refused_beyond_what_the_person_was_told_is_goodwill():
    # As above, but the person gives 20.00: 12.86 give back what they were told of, 7.14 are goodwill.
    world, left, _ = over_capture_left_to_a_person_with_pens_to_ship()
    world.gateway.script("refund", "refuse")
    world.actions.cancel(left.id, "no more pens", actor="key_web", request_key="k-2")
    world.gateway.script("refund", "approve")

    world.refunds.issue_refund(left.id, Money.of("20.00", "USD"), "the pen's shipping, and sorry", "cs-1", "key_cs")
    done = world.actions.cancel(left.id, "no more pens", actor="key_web", request_key="k-2")

    assert [(r.amount, r.over_capture) for r in done.payment.refunds[4:]] == [
        (Money.of("20.00", "USD"), Money.of("12.86", "USD")),
        (Money.of("47.14", "USD"), None),
    ]
    assert settled(done) == done.totals.grand_total - Money.of("7.14", "USD")


def test_a_return_after_an_appeased_over_capture_and_a_cancel_that_raised_it_gives_back_the_rest_once():
    world, left, east = over_capture_left_to_a_person_with_pens_to_ship()
    world.refunds.issue_refund(left.id, Money.of("12.86", "USD"), "the pen's shipping", "cs-1", "key_cs")
    world.actions.cancel(left.id, "no more pens", actor="key_web")
    world.actions.deliver(left.id, east, actor="key_carrier")
    returns, _ = returns_for(world, Clock(NOW + timedelta(days=3)))
    item = returns.request(left.id, ask(("L1", 1, "damaged")), actor="key_cs")
    returns.receive(item.id, receipt("wh-east", ("L1", 1, "resellable")), "key_wh")
    run_return_workflow(returns, item.id, "returns-workflow")
    world.actions.deliver(left.id, east, actor="key_carrier")
    world.actions.cancel(left.id, "no more pens", actor="key_web")

    done = world.order(left.id)
    assert [(r.kind, r.status, r.amount) for r in done.payment.refunds][3:] == [
        ("appeasement", "succeeded", Money.of("12.86", "USD")),
        ("cancellation", "succeeded", Money.of("47.14", "USD")),
        ("return", "succeeded", Money.of("28.33", "USD")),
    ]
    assert done.payment.refunded == done.payment.captured  # everything back once, nothing beyond
    assert (done.status, done.payment.status) == (S.RETURNED, P.REFUNDED)


def test_an_over_capture_refund_whose_third_refusal_a_repeat_hears_after_an_outage_still_calls_a_person():
    # Before: the third ask met an outage and stayed pending; the next delivery reported asked it
    # again (finish_pending) and the gateway refused it, but only the call that began a refund told
    # a person. Three refusals in a row, nothing asked it again, and no entry, no alarm, no log.
    world = build_world(STOCK, PerUnitShipping())
    order = world.allocated(("MUG", 1), ("CAP", 3), shipping_method="per_unit")
    east = world.shipment_at(order, "wh-east")
    world.actions.ship(order.id, east, None, actor="key_wh")
    outage = ["transient"] * 3  # every attempt of one ask (Payments' attempts)
    world.gateway.script("refund", "refuse", "refuse", *outage, "refuse")
    world.actions.cancel(order.id, "no mug", actor="key_web", lines={"L1": 1})
    world.actions.deliver(order.id, east, actor="key_carrier")
    world.actions.deliver(order.id, east, actor="key_carrier")
    assert [r.status for r in world.order(order.id).payment.refunds] == ["failed", "failed", "pending"]

    for _ in range(3):
        world.actions.deliver(order.id, east, actor="key_carrier")

    after = world.order(order.id)
    assert [r.status for r in after.payment.refunds] == ["failed"] * 3
    told = [e for e in world.history(order.id) if e.type is OrderEvent.OVER_CAPTURE_NOT_REFUNDED]
    assert [(e.actor, e.detail["amount"]) for e in told] == [
        ("key_carrier", after.payment.refunds[-1].amount.model_dump(mode="json"))
    ]


def test_a_ship_and_a_delivery_that_both_hear_the_third_refusal_call_a_person_once(monkeypatch):
    # The delivery reported again begins the third ask; the warehouse's ship repeated meanwhile finds
    # it pending and asks it too: the gateway refuses both. The one whose write records the refusal
    # tells the person; the other finds it recorded.
    world = build_world(STOCK, PerUnitShipping())
    order = world.allocated(("MUG", 1), ("CAP", 3), shipping_method="per_unit")
    east = world.shipment_at(order, "wh-east")
    world.actions.ship(order.id, east, None, actor="key_wh")
    world.gateway.script("refund", "refuse")
    world.actions.cancel(order.id, "no mug", actor="key_web", lines={"L1": 1})
    world.actions.deliver(order.id, east, actor="key_carrier")

    def the_ship_repeated() -> None:
        world.actions.ship(order.id, east, None, actor="key_wh")

    landed = before_the_next_write(world, monkeypatch, the_ship_repeated, skip=1)  # after the third is begun
    world.actions.deliver(order.id, east, actor="key_carrier")
    monkeypatch.undo()

    assert landed and [r.status for r in world.order(order.id).payment.refunds] == ["failed"] * 3
    assert world.gateway.keys("refund")[-2:] == [world.gateway.keys("refund")[-1]] * 2  # both asked it
    told = [e for e in world.history(order.id) if e.type is OrderEvent.OVER_CAPTURE_NOT_REFUNDED]
    assert [e.actor for e in told] == ["key_wh"]


def test_the_last_parcel_after_an_over_capture_was_refunded_captures_nothing_and_records_nothing_negative():
    # The first parcel paid all the shipping; a cancelled unit made shipping cheaper by more than
    # the pending parcel still carries, so the cancel refunded the excess: that parcel is paid.
    world = build_world(STOCK, PerUnitShipping())
    world.catalog.put_product(product("GUM", "0.50", weight_grams=5))
    world.inventory.set_on_hand("GUM", "wh-west", 5, reason="count")
    order = world.allocated(("GUM", 2), ("CAP", 3), shipping_method="per_unit")
    east, west = world.shipment_at(order, "wh-east"), world.shipment_at(order, "wh-west")
    world.actions.ship(order.id, east, None, actor="key_wh")
    cancelled = world.actions.cancel(order.id, "one gum", actor="key_web", lines={"L1": 1})
    assert [r.kind for r in cancelled.payment.refunds] == ["cancellation"]
    captured = cancelled.payment.captured

    done = world.actions.ship(order.id, west, None, actor="key_wh")

    assert done.status is S.SHIPPED
    assert done.payment.captured == captured  # no capture: nothing negative recorded either
    assert done.shipment(west).captured == Money.zero("USD")
    assert settled(done) == done.totals.grand_total
    assert len(world.spy.captured) == 1


def test_a_total_left_higher_than_the_captures_is_captured_once_nothing_is_left_to_ship():
    world = build_world(STOCK, PerUnitShipping())
    order = world.allocated(("MUG", 1), ("CAP", 3), shipping_method="per_unit")
    west = world.shipment_at(order, "wh-west")
    world.actions.ship(order.id, west, None, actor="key_wh")  # the mug's share only, no shipping

    done = world.actions.cancel(order.id, "no caps", actor="key_web")

    assert done.totals.shipping == Money.of("2.00", "USD")
    assert done.payment.captured == done.totals.grand_total and done.payment.status is P.CAPTURED
    entry = next(h for h in world.history(order.id) if h.type == "payment_captured")
    assert entry.detail["amount"] == {"amount": "2.00", "currency": "USD"}
    assert done.payment.authorized == done.payment.captured


# --- A settlement that dies after the gateway captured ------------------------------------------

TWO = Money.of("2.00", "USD")


def a_settlement_that_died(monkeypatch: pytest.MonkeyPatch) -> tuple[World, Order]:
    """An order whose cancel of the rest died after the gateway captured the settlement (the 2.00
    of shipping the mug's parcel did not carry) and before the order recorded it."""
    world = build_world(STOCK, PerUnitShipping())
    order = world.allocated(("MUG", 1), ("CAP", 3), shipping_method="per_unit")
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    dies_before_recording(world, monkeypatch, "payment_captured")
    with pytest.raises(Died):
        world.actions.cancel(order.id, "no caps", actor="key_web")
    monkeypatch.undo()
    return world, order


def test_a_settlement_capture_whose_cancel_died_stays_on_the_order_stored_and_never_shown(monkeypatch):
    world, order = a_settlement_that_died(monkeypatch)

    after = world.order(order.id)
    assert after.status is S.SHIPPED and after.payment.captured == after.totals.grand_total - TWO
    assert [amount for _, amount, _ in world.spy.captured][-1] == TWO  # the gateway's truth
    stored = Order.model_validate_json(after.stored_json())
    assert [(r.shipment_id, r.amount) for r in stored.captures_requested] == [(None, TWO)]
    assert "captures_requested" not in after.model_dump(mode="json")
    # Bookkeeping: the outcome has the entry (after the cancel's, only its emptied parcel's booking cancelled).
    assert [h.type for h in world.history(order.id)][-2:] == ["units_cancelled", "carrier_booking_cancelled"]
    assert world.spy.voided == []  # the rest of the authorization waits for the settlement


def test_a_cancel_repeated_after_its_settlement_died_records_the_capture_it_made(monkeypatch):
    world, order = a_settlement_that_died(monkeypatch)

    done = world.actions.cancel(order.id, "no caps", actor="key_web")

    assert done.payment.captured == done.totals.grand_total and done.payment.status is P.CAPTURED
    assert done.captures_requested == [] and done.payment.authorized == done.payment.captured
    settlement = [key for key in world.gateway.keys("capture") if ":settlement:" in key]
    assert len(settlement) == 2 and len(set(settlement)) == 1  # asked again under its key
    assert [amount for _, amount, _ in world.spy.captured][1:] == [TWO] and world.spy.refunded == []
    assert [h.type for h in world.history(order.id)].count("payment_captured") == 1


def test_the_last_parcel_shipped_again_records_a_settlement_that_died(monkeypatch):
    world, order = a_settlement_that_died(monkeypatch)

    again = world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")

    assert again.payment.captured == again.totals.grand_total == again.payment.authorized
    assert again.captures_requested == [] and world.spy.captured_total() == again.totals.grand_total.amount


def test_a_cancel_of_units_after_a_settlement_died_records_it_and_refuses_the_shipped_units(monkeypatch):
    # settle_capture_requests runs before any change to the units: a settlement is owed whatever
    # happens next, so it is recorded, never given back like a shipment's capture.
    world, order = a_settlement_that_died(monkeypatch)

    with pytest.raises(InvalidTransition):
        world.actions.cancel(order.id, "the mug too", actor="key_web", lines={"L1": 1})

    after = world.order(order.id)
    assert after.payment.captured == after.totals.grand_total and after.captures_requested == []
    assert world.spy.refunded == []


def test_a_settlement_the_gateway_refuses_when_asked_again_was_never_made(monkeypatch):
    world, order = a_settlement_that_died(monkeypatch)
    world.gateway.script("capture", "refuse")

    refused = world.actions.cancel(order.id, "no caps", actor="key_web")

    assert refused.captures_requested == [] and refused.payment.captured == refused.totals.grand_total - TWO
    assert refused.payment.authorized > refused.payment.captured  # the rest is not released under it
    entry = world.history(order.id)[-1]
    assert (entry.type, entry.detail["amount"]) == ("capture_not_made", TWO.model_dump(mode="json"))
    world.gateway.script("capture", "approve")
    done = world.actions.cancel(order.id, "no caps", actor="key_web")  # asked again: a new request
    assert done.payment.captured == done.totals.grand_total == done.payment.authorized


def test_a_settlement_that_died_is_kept_when_its_payment_plugin_was_removed(monkeypatch):
    # The dead cancel's settlement went through the plugin now gone: the gateway holds the 2.00.
    removed = Removed()
    world = build_world(STOCK, PerUnitShipping(), removed)
    order = world.allocated(("MUG", 1), ("CAP", 3), shipping_method="per_unit")
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    dies_before_recording(world, monkeypatch, "payment_captured")
    with pytest.raises(Died):
        world.actions.cancel(order.id, "no caps", actor="key_web")
    monkeypatch.undo()
    removed.gone = True

    world.actions.cancel(order.id, "no caps", actor="key_web")

    after = world.order(order.id)
    assert [(r.shipment_id, r.amount) for r in after.captures_requested] == [(None, TWO)]
    assert "capture_not_made" not in [h.type for h in world.history(order.id)]
    removed.gone = False
    done = world.actions.cancel(order.id, "no caps", actor="key_web")
    assert done.payment.captured == done.totals.grand_total and done.captures_requested == []


def test_a_settlement_no_payment_plugin_took_is_taken_back_when_the_cancel_made_it(monkeypatch):
    removed = Removed()
    world = build_world(STOCK, PerUnitShipping(), removed)
    order = world.allocated(("MUG", 1), ("CAP", 3), shipping_method="per_unit")
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    removed.gone = True

    world.actions.cancel(order.id, "no caps", actor="key_web")

    assert world.order(order.id).captures_requested == []  # nothing was ever asked under its key
    assert "capture_not_made" in [h.type for h in world.history(order.id)]


def test_the_repositories_refuse_another_capture_under_a_settlement_request(monkeypatch):
    # The settlement's key is what was captured before it: changed under it, asking again would
    # capture a second time.
    world, order = a_settlement_that_died(monkeypatch)
    current = world.order(order.id)
    more = current.payment.model_copy(update={"captured": current.payment.captured + TWO})
    moved = current.model_copy(update={"payment": more, "version": current.version + 1})
    with pytest.raises(InvalidTransition, match="settlement capture requested"):
        world.orders.update(moved, current, [])
    with pytest.raises(InvalidTransition, match=r"no settlement capture of 1\.00"):
        current.record_settlement_capture(Money.of("1.00", "USD"), "cap_1", at=current.updated_at, actor="k")


def test_units_cancelled_before_their_parcel_asked_for_its_capture_are_never_captured(world, monkeypatch):
    order = world.allocated(("MUG", 4))
    (shipment,) = order.shipments
    before_the_next_write(
        world, monkeypatch, lambda: world.actions.cancel(order.id, "one fewer", actor="key_web", lines={"L1": 1})
    )

    done = world.actions.ship(order.id, shipment.id, None, actor="key_wh")

    assert (done.status, done.lines[0].quantity, done.lines[0].shipped_quantity) == (S.SHIPPED, 3, 3)
    assert [amount for _, amount, _ in world.spy.captured] == [done.totals.grand_total]
    assert settled(done) == done.totals.grand_total and done.payment.refunds == []


def test_units_cancelled_while_their_parcel_was_being_captured_get_that_capture_refunded_first(world, monkeypatch):
    # The ship asked the gateway for the parcel's four units; the cancel took a unit out of it before
    # the ship recorded that capture: the capture is refunded, and the ship, refused, is repeated.
    order = world.allocated(("MUG", 4))
    (shipment,) = order.shipments
    before_the_next_write(
        world, monkeypatch, lambda: world.actions.cancel(order.id, "one fewer", actor="key_web", lines={"L1": 1}),
        skip=1,
    )  # fmt: skip
    with pytest.raises(InvalidTransition):
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")
    monkeypatch.undo()

    done = world.actions.ship(order.id, shipment.id, None, actor="key_wh")

    assert (done.status, done.lines[0].quantity, done.lines[0].shipped_quantity) == (S.SHIPPED, 3, 3)
    first, second = (amount for _, amount, _ in world.spy.captured)
    assert (first, second) == (order.totals.grand_total, done.totals.grand_total)
    assert [amount for _, amount, _ in world.spy.refunded] == [first]
    assert done.payment.captured == done.totals.grand_total and done.payment.refunds == []


def test_a_ship_that_finds_its_parcel_emptied_by_a_cancel_before_it_asks_for_its_capture_is_409(world, monkeypatch):
    # The west's ship read its parcel pending; the customer's cancel of the mug emptied that parcel
    # before the ship wrote the capture it asks for: nothing is asked of the gateway, and the ship is
    # refused (409) as a ship of a cancelled parcel is, not a crash.
    order = world.allocated(("MUG", 1), ("CAP", 1))
    west, east = world.shipment_at(order, "wh-west"), world.shipment_at(order, "wh-east")
    before_the_next_write(
        world, monkeypatch, lambda: world.actions.cancel(order.id, "no mug", actor="key_web", lines={"L1": 1})
    )

    with pytest.raises(InvalidTransition):
        world.actions.ship(order.id, west, None, actor="key_wh")

    done = world.order(order.id)
    assert done.shipment(west).status is ShipmentStatus.CANCELLED and done.captures_requested == []
    assert world.spy.captured == []
    shipped = world.actions.ship(order.id, east, None, actor="key_wh")
    assert (shipped.status, shipped.payment.captured) == (S.SHIPPED, shipped.totals.grand_total)


def test_a_cancel_request_names_each_line_once():
    with pytest.raises(ValueError):
        CancelRequest.model_validate({"reason": "x", "lines": [{"line_id": "L1", "quantity": 1}] * 2})
    with pytest.raises(ValueError):
        CancelRequest.model_validate({"reason": "x", "lines": [{"line_id": "L1", "quantity": 0}]})
    assert CancelRequest.model_validate({"reason": "x"}).lines is None


def test_a_pending_settlement_refund_is_finished_by_the_next_cancel(world, monkeypatch):
    order = world.allocated(("MUG", 1), ("CAP", 1))
    world.actions.ship(order.id, order.shipments[0].id, None, actor="key_wh")
    world.gateway.script("refund", "transient", "transient", "transient", "approve")
    with pytest.raises(PaymentGatewayUnavailable):
        world.refunds.issue_refund(order.id, Money.of("1.00", "USD"), "goodwill", "k1", actor="key_cs")

    done = world.actions.cancel(order.id, "rest", actor="key_web")

    assert [r.status for r in done.payment.refunds if r.kind == "appeasement"] == ["succeeded"]
    assert all(s.status is not ShipmentStatus.PENDING for s in done.shipments)


def _gum_order_with_its_shipping_captured() -> tuple[World, Order]:
    world = build_world(STOCK, PerUnitShipping())
    world.catalog.put_product(product("GUM", "0.50", weight_grams=5))
    world.inventory.set_on_hand("GUM", "wh-west", 5, reason="count")
    order = world.allocated(("GUM", 4), ("CAP", 3), shipping_method="per_unit")
    world.actions.ship(order.id, world.shipment_at(order, "wh-east"), None, actor="key_wh")  # all the shipping
    return world, order


def test_two_settlements_that_read_the_order_at_different_times_refund_the_whole_over_capture(monkeypatch):
    # Each cancel settles the payment after its write, on the order as it then read it. The first
    # read the order with its own unit gone, the second with both gone and no refund yet; the
    # first refund landed first. Both used to take the first settlement's key, so the second was
    # answered with the first's refund and the rest stayed captured.
    apart, order = _gum_order_with_its_shipping_captured()
    for reason in ("one gum", "another gum"):
        apart.actions.cancel(order.id, reason, actor="key_web", lines={"L1": 1})
    expected = [r.amount for r in apart.order(order.id).payment.refunds]
    world, order = _gum_order_with_its_shipping_captured()
    units = world.actions._units
    settle = units._settle_payment
    read: list[Order] = []
    monkeypatch.setattr(units, "_settle_payment", lambda order, actor, **_: read.append(order))
    for reason in ("one gum", "another gum"):
        world.actions.cancel(order.id, reason, actor="key_web", lines={"L1": 1})
    monkeypatch.setattr(units, "_settle_payment", settle)

    for seen in read:
        settle(seen, "key_web")

    done = world.order(order.id)
    assert len(expected) == 2
    assert {(r.kind, r.status) for r in done.payment.refunds} == {("cancellation", "succeeded")}
    assert done.payment.refunded == sum(expected[1:], expected[0])
    assert sum(amount.amount for _, amount, _ in world.spy.refunded) == done.payment.refunded.amount


def test_a_line_cancel_sent_right_after_allocation_is_decided_on_the_order_as_written(world, monkeypatch):
    # GetItem is eventually consistent: just after the order was allocated, a plain read may still
    # show it authorized, with none of its units in a shipment yet: the write decided on it loses
    # (it is conditional on the version read), and the cancel is decided again on the order as written.
    order_id = world.place(("MUG", 2), ("CAP", 3))
    world.workflow.authorize_payment(order_id, attempt=0)
    authorized = world.order(order_id)
    world.workflow.reserve_stock(order_id)
    world.workflow.create_shipments(order_id)
    real, stale = world.orders.get, [authorized]
    monkeypatch.setattr(world.orders, "get", lambda oid, consistent=False: real(oid) if consistent or not stale
                        else stale.pop())  # fmt: skip

    done = world.actions.cancel(order_id, "no caps", actor="key_web", lines={"L2": 3})

    assert (done.status, [line.quantity for line in done.lines]) == (S.ALLOCATED, [2, 0])
    assert world.held_for(order_id) == {("MUG", "wh-west", f"{order_id}#L1"): 2}


def test_a_cancel_sent_right_after_the_order_was_placed_finds_it(world, monkeypatch):
    order_id = world.place(("MUG", 1))
    real, stale = world.orders.get, [None]
    monkeypatch.setattr(world.orders, "get", lambda oid, consistent=False: real(oid) if consistent or not stale
                        else stale.pop())  # fmt: skip

    assert world.actions.cancel(order_id, "changed my mind", actor="key_web").status is S.CANCELLED


def test_a_cancel_keeps_the_unit_price_the_kept_units_were_sold_at_when_the_catalog_price_changed(world):
    # The mugs shipped at 12.50; the catalog says 15.00 by the time the cap is cancelled. Priced
    # again at 15.00, the mugs' line grew and the customer's card was charged 5.37 more for them.
    order = world.allocated(("MUG", 2), ("CAP", 1))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    world.catalog.put_product(product("MUG", "15.00", weight_grams=350))

    done = world.actions.cancel(order.id, "no cap", actor="key_web")

    mug = done.lines[0]
    assert (mug.unit_price, mug.total) == (order.lines[0].unit_price, order.lines[0].total)
    assert done.totals.grand_total == order.totals.grand_total - order.lines[1].total
    assert done.payment.captured == done.totals.grand_total


class VolumePrice:
    """Mugs cost 10.00 each from three units on, their catalog price below that."""

    @hookimpl(tryfirst=True)
    def oms_unit_price(self, product, quantity: int, currency: str) -> Money | None:
        return Money.of("10.00", currency) if product.sku == "MUG" and quantity >= 3 else None


def test_a_cancel_that_takes_a_line_below_its_volume_price_prices_the_units_left_without_it():
    world = build_world([("MUG", "wh-west", 5), ("CAP", "wh-east", 5)], VolumePrice())
    order = world.allocated(("MUG", 3), ("CAP", 1))
    assert order.lines[0].unit_price == Money.of("10.00", "USD")

    done = world.actions.cancel(order.id, "two mugs are enough", actor="key_web", lines={"L1": 1})

    assert done.lines[0].unit_price == Money.of("12.50", "USD")
    assert done.totals == priced_as_new(world, done, ("MUG", 2), ("CAP", 1)).totals


@pytest.mark.parametrize("return_first", [True, False], ids=["returned_then_cancelled", "cancelled_then_returned"])
def test_a_unit_returned_before_the_rest_of_its_line_was_cancelled_costs_nothing_once_the_volume_price_is_lost(
    return_first,
):  # fmt: skip
    # Three MUGs at the volume price, one shipped from the west, two waiting in the east. The shipped
    # one comes back (refunded its share at 10.00 a unit) and the two are cancelled: the line is the
    # returned MUG alone, now at 12.50. The customer keeps nothing but pays the shipping, whichever
    # came first; the settlement captured the lost volume price on the MUG already refunded.
    world, returns, order = volume_priced_mugs_west_delivered(1)

    one_returned_and_two_cancelled(world, returns, order.id, return_first=return_first)

    after = world.order(order.id)
    assert after.status is S.RETURNED
    assert after.payment.captured - after.payment.refunded == after.totals.shipping


@pytest.mark.parametrize("return_first", [True, False], ids=["returned_then_cancelled", "cancelled_then_returned"])
def test_a_unit_kept_of_a_line_whose_volume_price_a_cancel_lost_costs_its_own_price_whichever_came_first(
    return_first,
):  # fmt: skip
    # Four MUGs at the volume price, two shipped from the west, two waiting in the east. One shipped
    # MUG comes back and the two waiting are cancelled: the line is two MUGs at 12.50, one of them
    # returned. The customer pays for the MUG kept (its share of the line) and the shipping, whichever
    # came first: the returned MUG, refunded at 10.00, does not charge the kept one the 2.50 its
    # volume price lost. Once the kept MUG comes back too, only the shipping is paid.
    from core.refunds import cumulative_share

    world, returns, order = volume_priced_mugs_west_delivered(2)

    one_returned_and_two_cancelled(world, returns, order.id, return_first=return_first)

    after = world.order(order.id)
    kept = after.lines[0].total - cumulative_share(after.lines[0], 1)
    assert after.payment.captured - after.payment.refunded == kept + after.totals.shipping

    one_returned(returns, order.id)
    after = world.order(order.id)
    assert after.status is S.RETURNED
    assert after.payment.captured - after.payment.refunded == after.totals.shipping


def volume_priced_mugs_west_delivered(west: int) -> tuple[World, Returns, Order]:
    """An order of `west` + 2 MUGs at the volume price (three_days_on): the `west` MUGs' parcel
    shipped and delivered from wh-west, the two at wh-east waiting. The world, its returns, the order."""
    world, returns = three_days_on([("MUG", "wh-west", west), ("MUG", "wh-east", 2)], VolumePrice())
    order = world.allocated(("MUG", west + 2))
    parcel = world.shipment_at(order, "wh-west")
    world.actions.ship(order.id, parcel, None, actor="key_wh")
    world.actions.deliver(order.id, parcel, actor="key_wh")
    return world, returns, order


def three_days_on(stock: list[tuple[str, str, int]], *plugins: object) -> tuple[World, Returns]:
    """A world over `stock` three days after NOW (its orders' returns in their window) and its returns."""
    clock = Clock(NOW + timedelta(days=3))
    world = build_world(stock, *plugins, clock=clock)
    return world, returns_for(world, clock)[0]


def exchanged_for_three(
    world: World, returns: Returns, sku: str, units: int = 1, wanted: str = "MUG"
) -> tuple[Order, Order]:
    """`units` of `sku` ordered and shipped, exchanged (received at wh-west) for three `wanted`; the
    replacement's parcel from wh-west shipped and delivered. The original and the replacement as placed."""
    order = world.allocated((sku, units))
    for shipment in order.shipments:
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")
    item = returns.request(order.id, exchange_of("L1", units, (wanted, 3)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", units, "resellable")), "key_wh")
    replacement = world.run(run_return_workflow(returns, item.id, actor="key_wh").exchange_order_id or "")
    west = world.shipment_at(replacement, "wh-west")
    world.actions.ship(replacement.id, west, None, actor="key_wh")
    world.actions.deliver(replacement.id, west, actor="key_wh")
    return order, replacement


def one_returned(returns: Returns, order_id: str) -> Return:
    """One unit of the order's first line returned: received resellable at wh-west and settled."""
    item = returns.request(order_id, ask(("L1", 1, None)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    return run_return_workflow(returns, item.id, actor="key_wh")


def one_returned_and_two_cancelled(world: World, returns: Returns, order_id: str, *, return_first: bool) -> None:
    """Of the order's first line, one unit delivered from wh-west returned (one_returned) and two
    waiting in the east cancelled: the return first, or the cancel, as `return_first` says."""
    steps = [
        lambda: one_returned(returns, order_id),
        lambda: world.actions.cancel(order_id, "no more of them", actor="key_cs", lines={"L1": 2}),
    ]
    for step in steps if return_first else reversed(steps):
        step()


def kept_only_both_shippings(world: World, order: Order, replacement: Order) -> list[Order]:
    """Asserts the replacement is returned whole and the two orders' payments kept their shipping and
    nothing else; the two orders as they are now."""
    paid = [world.order(order.id), world.order(replacement.id)]
    assert paid[1].status is S.RETURNED
    kept = sum((o.payment.captured - o.payment.refunded for o in paid), Money.zero("USD"))
    assert kept == paid[0].totals.shipping + paid[1].totals.shipping
    return paid


def test_a_cheaper_replacement_edited_up_captures_the_volume_price_its_cancel_lost_beyond_the_credit_it_used():
    # Two TSHIRTs (42.88) are exchanged for a CAP (13.33): 29.55 of the credit comes back at once and
    # 13.33 pays for the CAP. The customer then edits it to four MUGs at the volume price (47.90), so
    # the card is authorized 34.57. The east parcel (two MUGs) ships, capturing 13.12, and the two in
    # the west are cancelled: two MUGs at 12.50 cost 31.81, 18.48 of it the card's. The settlement
    # captures the 5.36 the lost volume price adds; counted against the whole credit (the 29.55 that
    # came back included) it captured nothing and the customer paid 5.36 short.
    world, returns = three_days_on(
        [("MUG", "wh-west", 2), ("MUG", "wh-east", 2), ("TSHIRT", "wh-west", 2), ("CAP", "wh-west", 1)], VolumePrice()
    )
    order = world.allocated(("TSHIRT", 2))
    for shipment in order.shipments:
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")
    item = returns.request(order.id, exchange_of("L1", 2, ("CAP", 1)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 2, "resellable")), "key_wh")
    settled = run_return_workflow(returns, item.id, actor="key_wh")
    placed = world.order(settled.exchange_order_id or "")
    credit = placed.exchange_credit
    assert credit is not None and settled.refund == credit - placed.totals.grand_total
    four_mugs = OrderEdit(lines=[LineInput(sku="MUG", quantity=4)])
    replacement = world.run(world.actions.edit(placed.id, placed.version, four_mugs, "key_cs").id)
    world.actions.ship(replacement.id, world.shipment_at(replacement, "wh-east"), None, actor="key_wh")

    world.actions.cancel(replacement.id, "two mugs are enough", actor="key_cs", lines={replacement.lines[0].line_id: 2})

    after, original = world.order(replacement.id), world.order(order.id)
    assert after.lines[0].unit_price == Money.of("12.50", "USD")
    assert after.payment.captured - after.payment.refunded == after.totals.grand_total - placed.totals.grand_total
    assert original.payment.refunded == settled.refund
    paid = [o.payment.captured - o.payment.refunded for o in (original, after)]
    assert paid[0] + paid[1] == order.totals.grand_total - credit + after.totals.grand_total


def test_a_replacement_unit_returned_before_its_line_lost_its_volume_price_costs_nothing():
    # A TSHIRT is exchanged for three MUGs at the volume price: its credit pays for them but for the
    # difference the replacement's own payment pays. The MUG shipped from the west comes back
    # (refunded from the replacement's captures at 10.00 a unit) and the two waiting in the east
    # are cancelled: the customer keeps nothing but pays both orders' shipping. The credit given
    # back counted the MUG returned at 12.50, as the line now is, and kept the 2.50 its volume price lost.
    world, returns = three_days_on(
        [("MUG", "wh-west", 1), ("MUG", "wh-east", 2), ("TSHIRT", "wh-west", 1)], VolumePrice()
    )
    order, replacement = exchanged_for_three(world, returns, "TSHIRT")
    mug = returns.request(replacement.id, ask(("L1", 1, None)), actor="key_cs")
    returns.receive(mug.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    run_return_workflow(returns, mug.id, actor="key_wh")

    world.actions.cancel(replacement.id, "no more mugs", actor="key_cs", lines={"L1": 2})

    kept_only_both_shippings(world, order, replacement)


@pytest.mark.parametrize("return_first", [True, False], ids=["returned_then_cancelled", "cancelled_then_returned"])
def test_a_replacement_unit_refunded_from_the_credit_alone_costs_nothing_once_its_line_lost_its_volume_price(
    return_first,
):  # fmt: skip
    # Two TSHIRTs are exchanged for three MUGs at the volume price: the credit pays for all of them
    # (the replacement captures nothing). The MUG shipped from the west comes back, refunded from the
    # credit alone at 10.00 a unit, and the two waiting in the east are cancelled: the customer
    # keeps nothing and pays both orders' shipping (10.00). With nothing recorded of what that MUG
    # was refunded, the credit given back counted it at 12.50, as the line now is, and the customer
    # paid 12.68.
    world, returns = three_days_on(
        [("MUG", "wh-west", 1), ("MUG", "wh-east", 2), ("TSHIRT", "wh-west", 2)], VolumePrice()
    )
    order, replacement = exchanged_for_three(world, returns, "TSHIRT", 2, wanted="MUG")
    assert replacement.payment.captured == Money.zero("USD")

    one_returned_and_two_cancelled(world, returns, replacement.id, return_first=return_first)

    paid = kept_only_both_shippings(world, order, replacement)
    assert Order.model_validate_json(paid[1].stored_json()) == paid[1]


class FiveOffEveryOrder:
    """A shop's own rule: 5.00 off every order, no code needed (an order keeps what it granted)."""

    @hookimpl
    def oms_discounts(self, draft: PricingDraft) -> list[Discount]:
        return [Discount(code="five_off", amount=Money.of("5.00", draft.currency))]


@pytest.mark.parametrize("return_first", [True, False], ids=["returned_then_cancelled", "cancelled_then_returned"])
def test_a_replacement_unit_refunded_from_the_credit_alone_gets_the_credit_back_once_a_fixed_discount_made_it_cheaper(
    return_first,
):  # fmt: skip
    # Two TSHIRTs are exchanged for three CAPs, 5.00 off: the credit pays for all of them (the
    # replacement captures nothing). The CAP shipped from the west comes back, refunded from the
    # credit alone (6.55, its share of the three), and the two waiting in the east are cancelled: the
    # line is one CAP, 5.00 off, worth 2.97. The customer keeps nothing and pays both orders' shipping.
    # The replacement's payment was asked to capture the 3.58 the credit had refunded beyond the line;
    # refused (nothing authorized), it stopped the credit's unused 13.09 from being given back.
    world, returns = three_days_on(
        [("CAP", "wh-west", 1), ("CAP", "wh-east", 2), ("TSHIRT", "wh-west", 2)], FiveOffEveryOrder()
    )
    order, replacement = exchanged_for_three(world, returns, "TSHIRT", 2, wanted="CAP")
    assert replacement.payment.captured == Money.zero("USD")

    one_returned_and_two_cancelled(world, returns, replacement.id, return_first=return_first)

    kept_only_both_shippings(world, order, replacement)


def test_a_replacement_unit_whose_draw_on_the_credit_was_refused_is_refunded_what_the_credit_given_back_left_it():
    # Two TSHIRTs are exchanged for three CAPs, 5.00 off: the credit pays for all of them. The CAP
    # shipped from the west comes back; its refund from the credit alone (6.55, its share of the
    # three) is refused, and the two waiting in the east are cancelled: the credit's unused rest is
    # given back, counting the 6.55 as the CAP's. The refund asked again drew only what the CAP is
    # worth now (2.97, one CAP 5.00 off): the customer never got the other 3.58 back.
    from datetime import timedelta

    from tests.fakes import ScriptedGateway

    clock = Clock(NOW + timedelta(days=3))
    stock = [("CAP", "wh-west", 1), ("CAP", "wh-east", 2), ("TSHIRT", "wh-west", 2)]
    world = build_world(stock, FiveOffEveryOrder(), clock=clock)
    gateway = ScriptedGateway()
    returns, _ = returns_for(world, clock, gateway)
    order, replacement = exchanged_for_three(world, returns, "TSHIRT", 2, wanted="CAP")
    cap = returns.request(replacement.id, ask(("L1", 1, None)), actor="key_cs")
    returns.receive(cap.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    gateway.script("refund", "refuse", "approve")
    assert run_return_workflow(returns, cap.id, actor="key_wh").status is ReturnStatus.RECEIVED
    world.actions.cancel(replacement.id, "no more caps", actor="key_cs", lines={"L1": 2})

    assert run_return_workflow(returns, cap.id, actor="key_wh").status is ReturnStatus.REFUNDED

    kept_only_both_shippings(world, order, replacement)


@pytest.mark.parametrize("return_first", [True, False], ids=["returned_then_cancelled", "cancelled_then_returned"])
def test_a_replacement_unit_refunded_from_its_captures_is_not_given_back_twice_once_a_fixed_discount_made_it_cheaper(
    return_first,
):  # fmt: skip
    # A CAP (2.97 with 5.00 off) is exchanged for three MUGs, 5.00 off: the customer pays the rest. The
    # MUG shipped from the west captured its share (11.62) and comes back, refunded from that capture;
    # the two waiting in the east are cancelled: the line, one MUG 5.00 off, is now worth 8.04. The
    # replacement's payment took back the 3.58 refunded beyond the line (a smaller total to settle),
    # and the credit, counting that as paid by the replacement itself, gave the 3.58 back again.
    world, returns = three_days_on(
        [("MUG", "wh-west", 1), ("MUG", "wh-east", 2), ("CAP", "wh-west", 1)], FiveOffEveryOrder()
    )
    order, replacement = exchanged_for_three(world, returns, "CAP")
    assert world.order(replacement.id).payment.captured == Money.of("11.62", "USD")

    one_returned_and_two_cancelled(world, returns, replacement.id, return_first=return_first)

    kept_only_both_shippings(world, order, replacement)


@pytest.mark.parametrize("return_first", [True, False], ids=["returned_then_cancelled", "cancelled_then_returned"])
def test_a_replacement_unit_refunded_partly_from_the_credit_gets_the_credit_back_once_a_fixed_discount_made_it_cheaper(
    return_first,
):  # fmt: skip
    # Two TSHIRTs are exchanged for three MUGs, 5.00 off: the credit pays for most of them and the
    # replacement authorizes the rest (2.34), which the MUG shipped from the west captures. It comes
    # back, refunded 2.34 from that capture and the rest of its share from the credit, and the two
    # waiting in the east are cancelled. The cancel's settlement asked the replacement's card for
    # what the credit had refunded beyond the line: refused (nothing left authorized), the credit's
    # unused 23.24 was never given back, and the customer paid 33.24 for both orders' shipping.
    world, returns = three_days_on(
        [("MUG", "wh-west", 1), ("MUG", "wh-east", 2), ("TSHIRT", "wh-west", 2)], FiveOffEveryOrder()
    )
    order, replacement = exchanged_for_three(world, returns, "TSHIRT", 2, wanted="MUG")
    assert world.order(replacement.id).payment.captured == Money.of("2.34", "USD")

    one_returned_and_two_cancelled(world, returns, replacement.id, return_first=return_first)

    paid = kept_only_both_shippings(world, order, replacement)
    # A cancel repeated settles again and asks the card for nothing the credit paid.
    world.actions.cancel(replacement.id, "no more mugs", actor="key_cs")
    assert world.order(replacement.id).payment == paid[1].payment
    assert world.order(order.id).payment == paid[0].payment


@pytest.mark.parametrize(
    ("west", "return_first"), [(2, True), (2, False), (1, False)],
    ids=["returned_then_cancelled", "cancelled_then_returned", "cancelled_then_the_only_one_returned"],
)  # fmt: skip
def test_a_replacements_credit_is_not_given_back_for_what_its_card_is_still_owed_back(west, return_first):
    # A TSHIRT is exchanged for three MUGs: the credit pays for most of them and the MUGs shipped from
    # the west capture the rest. One comes back and the rest, waiting in the east, is cancelled: the
    # card holds what the replacement no longer costs past its credit (10.37 with two MUGs shipped),
    # and the gateway refuses that refund. The credit given back counted it as paid by the card;
    # refunded by the next settlement, the customer got it back twice. And a MUG returned after that
    # refusal must not be refunded from what the card holds for it, or nothing refunds the card.
    world, returns = three_days_on([("MUG", "wh-west", west), ("MUG", "wh-east", 3 - west), ("TSHIRT", "wh-west", 1)])
    order, replacement = exchanged_for_three(world, returns, "TSHIRT")
    mug = returns.request(replacement.id, ask(("L1", 1, None)), actor="key_cs")
    returns.receive(mug.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")

    def return_the_mug() -> None:
        run_return_workflow(returns, mug.id, actor="key_wh")

    def cancel_the_rest() -> None:
        world.gateway.script("refund", "refuse", "approve")
        world.actions.cancel(replacement.id, "no more mugs", actor="key_cs", lines={"L1": 3 - west})
        refunds = world.order(replacement.id).payment.refunds
        assert [r.status for r in refunds if r.kind == "cancellation"] == ["failed"]

    for step in (return_the_mug, cancel_the_rest) if return_first else (cancel_the_rest, return_the_mug):
        step()
    world.actions.cancel(replacement.id, "no more mugs", actor="key_cs")  # the settlement asked again

    paid = [world.order(order.id), world.order(replacement.id)]
    assert [r.status for r in paid[1].payment.refunds if r.kind == "cancellation"] == ["failed", "succeeded"]
    kept = sum((o.payment.captured - o.payment.refunded for o in paid), Money.zero("USD"))
    line = paid[1].lines[0]
    mug_kept = line.total - world.returns.get(mug.id).refund if west == 2 else Money.zero("USD")
    assert kept == paid[0].totals.shipping + paid[1].totals.shipping + mug_kept


def test_a_replacement_return_neither_its_captures_nor_its_credit_could_refund_is_refunded_after_the_capture():
    # A PEN is exchanged for three MUGs at the volume price: its credit pays for little, and the two
    # MUGs shipped from the west capture 21.45. The MUG waiting in the east is cancelled: the line
    # loses its volume price, and the settlement's capture of 6.79 is refused. Both MUGs come back,
    # worth 26.81: the captures refund 21.45 and the credit its 3.57, 1.79 short. The cancel asked
    # again captured the 6.79, and nothing refunded the 1.79 the return was still owed.
    world, returns = three_days_on([("MUG", "wh-west", 2), ("MUG", "wh-east", 1), ("PEN", "wh-west", 1)], VolumePrice())
    order, replacement = exchanged_for_three(world, returns, "PEN")
    world.gateway.script("capture", "refuse", "approve")
    world.actions.cancel(replacement.id, "no more mugs", actor="key_cs", lines={"L1": 1})
    mugs = returns.request(replacement.id, ask(("L1", 2, None)), actor="key_cs")
    returns.receive(mugs.id, receipt("wh-west", ("L1", 2, "resellable")), "key_wh")
    run_return_workflow(returns, mugs.id, actor="key_wh")

    world.actions.cancel(replacement.id, "no more mugs", actor="key_cs")  # the settlement asked again

    paid = kept_only_both_shippings(world, order, replacement)
    assert world.returns.get(mugs.id).refund == paid[1].lines[0].total


def test_a_cancellation_refund_left_pending_is_finished_when_the_last_parcel_ships():
    # The cancel's refund of the shipping its unit no longer costs found the gateway down and stayed
    # pending; nothing would ask for it again unless someone repeated the cancel.
    world, order = _gum_order_with_its_shipping_captured()
    world.gateway.script("refund", "transient")
    world.actions.cancel(order.id, "one gum", actor="key_web", lines={"L1": 1})
    assert [(r.kind, r.status) for r in world.order(order.id).payment.refunds] == [("cancellation", "pending")]
    world.gateway.script("refund", "approve")

    done = world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")

    assert done.status is S.SHIPPED
    assert [(r.kind, r.status) for r in done.payment.refunds] == [("cancellation", "succeeded")]
    assert settled(done) == done.totals.grand_total


# --- The label of a parcel that lost units --------------------------------------------------------


class FailsBookings:
    """A carrier plugin whose API goes down: while it is, every booking it is asked for fails."""

    def __init__(self) -> None:
        self.down = False

    @hookimpl(tryfirst=True)
    def oms_carrier_create_shipment(self, shipment_id):
        if self.down:
            raise ConnectionError("carrier API unreachable")


@pytest.mark.parametrize("cancelled", [3, 2], ids=["one_mug_left", "two_mugs_left"])
def test_a_pending_parcel_that_lost_units_is_booked_again_and_shows_a_label_for_what_it_holds(cancelled):
    carrier = RecordsBookings()
    world = build_world(STOCK, carrier)
    order = world.allocated(("MUG", 4), ("CAP", 2))
    west = world.shipment_at(order, "wh-west")
    first_label = order.shipment(west).label_url

    done = world.actions.cancel(order.id, "fewer mugs", actor="key_web", lines={"L1": cancelled})

    shipment = done.shipment(west)
    rebooked = carrier.asked[-1]
    left = 4 - cancelled
    assert rebooked[:2] == (west, booking_key(west, done.rebookings)) and rebooked[1] != west
    assert rebooked[2:] == ([("L1", left)], 350 * left)  # the mugs left, and what they weigh (350 g each)
    assert shipment.label_url == f"labels/{order.id}/{rebooked[1]}" != first_label
    assert world.labels.labels[rebooked[1]] != world.labels.labels[west]  # the first booking's label, 4 mugs
    assert done.labels_due == []
    assert [s.label_url for s in done.shipments if s.id != west] == [
        s.label_url for s in order.shipments if s.id != west
    ]  # the parcel that kept its units keeps its label
    (entry,) = [h for h in world.history(order.id) if h.type == "shipment_relabelled"]
    assert entry.detail["shipment_id"] == west


def test_a_carrier_that_fails_the_new_booking_keeps_the_cancel_and_the_next_ship_books_it():
    carrier = FailsBookings()
    world = build_world(STOCK, carrier)
    order = world.allocated(("MUG", 4), ("CAP", 2))
    west, east = world.shipment_at(order, "wh-west"), world.shipment_at(order, "wh-east")
    carrier.down = True

    done = world.actions.cancel(order.id, "fewer mugs", actor="key_web", lines={"L1": 3})

    assert [(line.quantity, line.cancelled_quantity) for line in done.lines] == [(1, 3), (2, 0)]  # the cancel stands
    assert done.labels_due == [west]
    assert Order.model_validate_json(done.stored_json()) == done and "labels_due" not in done.model_dump(mode="json")
    assert done.shipment(west).label_url == order.shipment(west).label_url  # still the old one, marked due
    (failed,) = [h for h in world.history(order.id) if h.type == "label_booking_failed"]
    assert failed.detail["shipment_id"] == west
    # The order's history, which the channel reads: the plugin, hook and type, never the words.
    assert "got no answer in oms_carrier_create_shipment: ConnectionError" in failed.detail["message"]
    assert "carrier API unreachable" not in failed.detail["message"]

    carrier.down = False
    shipped = world.actions.ship(order.id, east, None, actor="key_wh")

    key = booking_key(west, shipped.rebookings)
    assert shipped.labels_due == [] and shipped.shipment(west).label_url == f"labels/{order.id}/{key}"
    assert world.labels.labels[key] != world.labels.labels[west]


def test_a_new_label_that_loses_to_another_cancel_of_the_parcel_leaves_it_that_cancels_label(monkeypatch):
    carrier = RecordsBookings()
    world = build_world(STOCK, carrier)
    order = world.allocated(("MUG", 4), ("CAP", 2))
    west = world.shipment_at(order, "wh-west")
    before_the_next_write(  # after the first cancel's write, before its new label's
        world, monkeypatch, lambda: world.actions.cancel(order.id, "one more", actor="key_web", lines={"L1": 1}),
        skip=1,
    )  # fmt: skip

    world.actions.cancel(order.id, "fewer mugs", actor="key_web", lines={"L1": 2})

    shipment = world.order(order.id).shipment(west)
    first, second = [asked for asked in carrier.asked if asked[0] == west][1:]
    assert (first[1], first[2]) == (booking_key(west, 1), [("L1", 2)])
    assert (second[1], second[2]) == (booking_key(west, 2), [("L1", 1)])
    # The first cancel's label (two mugs) came too late: the parcel keeps the one for what it holds.
    assert shipment.lines[0].quantity == 1 and shipment.label_url == f"labels/{order.id}/{second[1]}"
    assert world.order(order.id).labels_due == []
    assert [h.type for h in world.history(order.id)].count("shipment_relabelled") == 1


def test_a_pickup_orders_units_cancel_after_its_store_stopped_taking_pickup_orders(world):
    """A store that stops offering pickup refuses new pickup orders; the ones it holds units for
    still cancel units, taxed at the store as they were."""
    world.inventory.set_on_hand("MUG", "store-sf", 5, reason="count")
    order = world.allocated(("MUG", 3), fulfillment={"type": "pickup", "location_id": "store-sf"})
    store = world.catalog.get_location("store-sf")
    world.catalog.put_location(store.model_copy(update={"pickup": False}))

    done = world.actions.cancel(order.id, "two are enough", actor="key_web", lines={"L1": 1})

    assert (done.status, done.lines[0].quantity, done.lines[0].cancelled_quantity) == (S.ALLOCATED, 2, 1)
    assert done.lines[0].tax_rate == order.lines[0].tax_rate
    assert world.held_for(order.id) == {("MUG", "store-sf", f"{order.id}#L1"): 2}
    with pytest.raises(InvalidRequest):
        world.place(("MUG", 1), fulfillment={"type": "pickup", "location_id": "store-sf"})


class RetiringShipping(PerUnitShipping):
    """Per-unit shipping until the shop stops offering it."""

    offered = True

    @hookimpl
    def oms_shipping_quotes(self, draft: PricingDraft, address: object) -> list[ShippingQuote]:
        return super().oms_shipping_quotes(draft, address) if self.offered else []


def test_units_cancel_after_the_orders_shipping_method_is_no_longer_offered_and_it_costs_what_it_did():
    """The shop stops offering per-unit shipping (a plugin dropped or reconfigured): new orders
    cannot choose it, but an order sold with it, whose parcels are booked with it, still cancels
    units, and its shipping costs what the customer was charged."""
    shipping = RetiringShipping()
    world = build_world(STOCK, shipping)
    order = world.allocated(("MUG", 2), ("CAP", 3), shipping_method="per_unit")
    assert order.totals.shipping == Money.of("10.00", "USD")
    shipping.offered = False

    done = world.actions.cancel(order.id, "one cap less", actor="key_web", lines={"L2": 1})

    assert (done.lines[1].quantity, done.shipping_method) == (2, "per_unit")
    assert done.totals.shipping == order.totals.shipping
    with pytest.raises(InvalidRequest) as refused:
        world.place(("MUG", 1), shipping_method="per_unit")
    assert refused.value.code == "unknown_shipping_method"


def test_units_cancel_after_no_plugin_prices_a_sold_sku_in_the_orders_currency(world):
    """The mug is priced in euros from now on: a new dollar order of it has no price, but a dollar
    order that sold mugs still cancels units, each kept at the price it was sold at."""
    order = world.allocated(("MUG", 3), ("CAP", 2))
    world.catalog.put_product(product("MUG", "11.00", currency="EUR", weight_grams=350))

    done = world.actions.cancel(order.id, "one mug less", actor="key_web", lines={"L1": 1})

    mug = done.lines[0]
    assert (mug.quantity, mug.unit_price) == (2, order.lines[0].unit_price)
    assert mug.total == mug.unit_price.times(2) - mug.discount + mug.tax
    with pytest.raises(InvalidRequest) as refused:
        world.place(("MUG", 1))
    assert refused.value.code == "no_price"


class CourierShipping:
    """A flat `courier` charge per order, whatever its units, at the rate the shop sets (`rate`)."""

    rate = "6.00"

    @hookimpl
    def oms_shipping_quotes(self, draft: PricingDraft, address: object) -> list[ShippingQuote]:
        return [ShippingQuote(method="courier", amount=Money.of(self.rate, draft.currency))]


def test_units_cancel_after_the_shop_raised_its_shipping_rate_keep_the_shipping_the_order_was_charged(world):
    """The courier's flat rate goes from 6.00 to 9.00 after the order was placed: cancelling a cap
    changes nothing about what its shipping costs, so the customer is not charged the new rate for
    cancelling (nor would a cut rate be refunded)."""
    courier = CourierShipping()
    world = build_world(STOCK, courier)
    order = world.allocated(("MUG", 2), ("CAP", 3), shipping_method="courier")
    assert order.totals.shipping == Money.of("6.00", "USD")
    courier.rate = "9.00"

    done = world.actions.cancel(order.id, "one cap less", actor="key_web", lines={"L2": 1})

    assert done.totals.shipping == Money.of("6.00", "USD")
    assert done.totals.grand_total == sum((line.total for line in done.lines), done.totals.shipping)
    assert done.totals.grand_total < order.totals.grand_total


def test_units_cancel_after_the_tax_rate_changed_keep_the_rate_the_units_were_sold_at(world, tmp_path, monkeypatch):
    """California's rate changes after the order was placed: the mugs left were sold, and charged,
    at the old one; cancelling one of them does not tax the others again at the new one."""
    order = world.allocated(("MUG", 3), ("CAP", 2))
    sold_at = order.lines[0].tax_rate
    assert sold_at is not None and sold_at.rate > 0
    rates = tmp_path / "tax_rates.json"
    rates.write_text(json.dumps({"US": {"regions": {"CA": {"standard": "0.25"}}}}))
    monkeypatch.setenv(TAX_RATES_FILE_ENV, str(rates))

    done = world.actions.cancel(order.id, "one mug less", actor="key_web", lines={"L1": 1})

    mug, cap = done.lines
    assert (mug.tax_rate, cap.tax_rate) == (sold_at, order.lines[1].tax_rate)
    assert mug.tax == (mug.unit_price.times(2) - mug.discount).times(sold_at.rate)
    assert cap.tax == order.lines[1].tax
    assert world.place(("MUG", 1)) and world.capture.quote(
        place_order(lines=[{"sku": "MUG", "quantity": 1}], payment={"method": "test", "token": "tok_approve"})
    ).lines[0].tax_rate.rate == Decimal("0.25")  # new orders are taxed at the new rate


def test_units_cancel_of_an_order_stored_before_lines_kept_their_tax_rate_are_still_taxed(world):
    placed = world.allocated(("MUG", 3))
    old = placed.model_copy(update={"lines": [line.model_copy(update={"tax_rate": None}) for line in placed.lines]})
    world.orders.put(old)

    done = world.actions.cancel(old.id, "one mug less", actor="key_web", lines={"L1": 1})

    assert done.lines[0].tax_rate == placed.lines[0].tax_rate
    assert done.lines[0].tax.amount > 0


def test_cancelling_the_rest_just_after_a_parcel_shipped_cancels_the_rest_while_plain_reads_lag(world, monkeypatch):
    # The customer cancels what is left a moment after the first parcel shipped: a plain read may
    # still show nothing shipped, and the whole cancel it decides on would be refused (409).
    from tests.unit.test_confirmations import lagging_reads

    order = world.allocated(("MUG", 2), ("CAP", 3))
    lagging_reads(world, monkeypatch)
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")

    done = world.actions.cancel(order.id, "the rest is not needed", actor="key_web")

    assert done.status is S.SHIPPED
    assert [(line.cancelled_quantity, line.shipped_quantity) for line in done.lines] == [(0, 2), (3, 0)]


def test_a_keyed_cancel_of_units_sent_again_after_the_keys_24_hours_cancels_them_again():
    # The key is honoured for 24 h (API.md): a cancel of one more unit days later under the same key
    # and lines (a key made of the order and line) is a new request. Answered with the order as the
    # first cancel left it, the unit the customer cancelled was still shipped and charged.
    clock = Clock(NOW)
    world = build_world([("MUG", "wh-west", 10)], clock=clock)
    order = world.allocated(("MUG", 3))
    key = f"api:key_cs:cancel-{order.id}-L1"
    world.actions.cancel(order.id, "one less", actor="key_cs", lines={"L1": 1}, request_key=key)
    assert (
        world.actions.cancel(order.id, "one less", actor="key_cs", lines={"L1": 1}, request_key=key).lines[0].quantity
        == 2
    )

    clock.now = NOW + timedelta(hours=25)
    later = world.actions.cancel(order.id, "one less", actor="key_cs", lines={"L1": 1}, request_key=key)

    assert (later.lines[0].quantity, later.lines[0].cancelled_quantity) == (1, 2)
    assert [entry.type for entry in world.history(order.id)].count(OrderEvent.UNITS_CANCELLED) == 2


def test_a_keyed_cancel_of_other_units_under_the_key_of_one_written_is_refused_and_cancels_nothing(world):
    # The first answer was lost (its idempotency record never stored): the key names that request,
    # whose entry keeps its lines, so other lines under it are 409, not the first answer replayed.
    order = world.allocated(("MUG", 3))
    key = f"api:key_cs:cancel-{order.id}"
    world.actions.cancel(order.id, "one less", actor="key_cs", lines={"L1": 1}, request_key=key)
    once = world.snapshot(order.id)

    with pytest.raises(Conflict) as reused:
        world.actions.cancel(order.id, "two less", actor="key_cs", lines={"L1": 2}, request_key=key)

    assert reused.value.code == "idempotency_key_reused"
    assert world.snapshot(order.id) == once


@pytest.mark.parametrize("held_while", ["reserved_not_allocated", "backordered"])
def test_a_keyed_cancel_of_units_sent_again_while_the_order_is_held_before_its_shipments_keeps_its_stock(held_while):
    # The first answer was lost; the order was sourced since and held before it had shipments
    # (between ReserveStock and CreateShipments, or waiting for stock). The retry brought the
    # reservations down to what its shipments need, none: every unit it held was released while
    # it still recorded them allocated, and shipping it after the release took them from on_hand
    # that other orders had reserved since.
    from tests.unit.test_holds import hold

    world = build_world([("MUG", "wh-west", 2 if held_while == "backordered" else 5)])
    world.catalog.put_product(product("MUG", "12.50", weight_grams=350, allow_backorder=True))
    order_id = world.place(("MUG", 4))
    world.workflow.authorize_payment(order_id, attempt=0)
    key = f"api:key_cs:cancel-{order_id}-L1"
    world.actions.cancel(order_id, "one less", actor="key_cs", lines={"L1": 1}, request_key=key)
    if held_while == "backordered":
        with pytest.raises(Backordered):
            world.workflow.reserve_stock(order_id)
    else:
        world.workflow.reserve_stock(order_id)
    hold(world, order_id)
    before = world.held_for(order_id)
    assert sum(before.values()) == (2 if held_while == "backordered" else 3)

    again = world.actions.cancel(order_id, "one less", actor="key_cs", lines={"L1": 1}, request_key=key)

    assert (again.status, again.lines[0].quantity) == (S.ON_HOLD, 3)
    assert world.held_for(order_id) == before


@pytest.mark.parametrize(
    ("lines", "refused"),
    [({"L1": 1}, InvalidTransition), ({"L2": 9}, InvalidRequest)],
    ids=["units that shipped (409)", "more units than the line has (422)"],
)
def test_a_refused_cancel_of_units_leaves_a_parcels_ship_in_flight_alone(world, monkeypatch, lines, refused):
    # The east parcel's ship asked the gateway for its capture and has not recorded it yet (its
    # process died, or it is a moment from its write): a cancel refused anyway must not take that
    # capture back, refund it, and make the warehouse's ship fail.
    order = world.allocated(("MUG", 1), ("CAP", 2))
    west, east = world.shipment_at(order, "wh-west"), world.shipment_at(order, "wh-east")
    world.actions.ship(order.id, west, None, actor="key_wh")
    ships_died(world, monkeypatch, order.id, [east])
    before = world.order(order.id)

    with pytest.raises(refused):
        world.actions.cancel(order.id, "changed my mind", actor="key_web", lines=lines)

    assert world.order(order.id) == before and world.spy.refunded == []
    shipped = world.actions.ship(order.id, east, None, actor="key_wh")
    assert (shipped.status, shipped.payment.status) == (S.SHIPPED, P.CAPTURED)
    assert shipped.payment.captured == shipped.totals.grand_total and world.spy.refunded == []


def test_a_cancel_of_units_that_shipped_a_moment_ago_leaves_a_parcels_ship_in_flight_alone(world, monkeypatch):
    # The west parcel shipped a moment ago while the east's ship waits to record its capture; a plain
    # read may still show the west parcel pending. The cancel of its units is refused (409) all the
    # same, decided on the order as written: it must not first take back the east's capture.
    from tests.unit.test_order_execution import west_shipped_while_the_easts_ship_waits

    order, _, east = west_shipped_while_the_easts_ship_waits(world, monkeypatch, ("MUG", 1), ("CAP", 2))

    with pytest.raises(InvalidTransition):
        world.actions.cancel(order.id, "no mug", actor="key_web", lines={"L1": 1})

    assert world.spy.refunded == []
    monkeypatch.undo()
    shipped = world.actions.ship(order.id, east, None, actor="key_wh")
    assert (shipped.status, shipped.payment.captured) == (S.SHIPPED, shipped.totals.grand_total)
    assert world.spy.refunded == []


@pytest.mark.parametrize("answers", [("approve",), ("refuse", "approve")], ids=["refunded", "refused_then_refunded"])
def test_a_replacement_whose_settlement_refund_is_refused_gives_back_none_of_its_credit_for_it(answers):
    # The t-shirt is exchanged for three caps and a mug, dearer than its credit: the caps' parcel
    # captured all the shipping (2.00 a unit), and the mug is cancelled. The 2.00 captured for its
    # shipping is refunded on the replacement; the gateway refused it the first time. Before: the
    # credit, counting that 2.00 as paid by the replacement, gave 2.00 back on the original at once,
    # and the cancel repeated refunded the 2.00 again: the customer got it twice.
    from tests.unit.test_returns import exchange_of

    clock = Clock(NOW + timedelta(days=3))
    world = build_world([("MUG", "wh-west", 5), ("CAP", "wh-east", 5), ("TSHIRT", "wh-west", 5)], PerUnitShipping(),
                        clock=clock)  # fmt: skip
    returns, _ = returns_for(world, clock)
    order = world.allocated(("TSHIRT", 1), shipping_method="per_unit")
    world.actions.ship(order.id, order.shipments[0].id, None, actor="key_wh")
    item = returns.request(order.id, exchange_of("L1", 1, ("CAP", 3), ("MUG", 1)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    replacement = world.run(run_return_workflow(returns, item.id, actor="key_wh").exchange_order_id or "")
    world.actions.ship(replacement.id, world.shipment_at(replacement, "wh-east"), None, actor="key_wh")
    world.gateway.script("refund", *answers)

    world.actions.cancel(replacement.id, "no mug", actor="key_web", lines={"L2": 1})
    done = world.actions.cancel(replacement.id, "no mug", actor="key_web")  # repeated: the refusal is tried again

    assert done.exchange_credit is not None and done.totals.grand_total > done.exchange_credit
    assert world.order(order.id).payment.refunds == []  # the caps use all the credit
    assert done.payment.captured - done.payment.refunded == done.totals.grand_total - done.exchange_credit


class CheapFromThree:
    """Mugs cost 2.00 each from three units on: a cancel of one of three raises the total."""

    @hookimpl(tryfirst=True)
    def oms_unit_price(self, product, quantity: int, currency: str) -> Money | None:
        return Money.of("2.00", currency) if product.sku == "MUG" and quantity >= 3 else None


@pytest.mark.parametrize("sourced", [False, True], ids=["authorized", "allocated"])
def test_a_cancel_of_units_that_would_raise_the_total_keeps_the_units_left_at_what_they_were_sold_for(sourced):
    # Three mugs at 2.00 authorized for 11.44; priced again, the two left would cost 12.50 each
    # (31.81), beyond the authorization: 409 before, and the customer could only cancel everything.
    # Nobody pays more for cancelling: the two keep the 2.00 they were sold at, the third comes off
    # at its share of the line, and the order ships, capturing no more than its new total.
    from core.refunds import units_share

    world = build_world(STOCK, CheapFromThree())
    order_id = world.place(("MUG", 3))
    world.workflow.authorize_payment(order_id, attempt=0)
    if sourced:
        world.workflow.reserve_stock(order_id)
        world.workflow.create_shipments(order_id)
    before = world.order(order_id)
    assert before.payment.authorized == before.totals.grand_total == Money.of("11.44", "USD")

    done = world.actions.cancel(order_id, "two are enough", actor="key_web", lines={"L1": 1})

    mugs = done.lines[0]
    assert (mugs.quantity, mugs.cancelled_quantity, mugs.unit_price) == (2, 1, Money.of("2.00", "USD"))
    assert done.totals.shipping == before.totals.shipping
    off = before.totals.grand_total - done.totals.grand_total  # the mug's share, as a return would refund it
    assert abs((off - units_share(before.lines[0], 1, before=2)).amount) <= Decimal("0.01")
    assert mugs.total == mugs.unit_price.times(2) - mugs.discount + mugs.tax
    if not sourced:
        world.workflow.reserve_stock(order_id)
        world.workflow.create_shipments(order_id)
    allocated = world.order(order_id)
    assert world.held_for(order_id) == {("MUG", "wh-west", f"{order_id}#L1"): 2}
    shipped = world.actions.ship(order_id, allocated.shipments[0].id, None, actor="key_wh")
    assert shipped.status is S.SHIPPED
    after = world.order(order_id)
    assert after.payment.captured - after.payment.refunded == done.totals.grand_total
    assert after.payment.status is PaymentStatus.CAPTURED and after.payment.authorized == after.payment.captured


def test_units_kept_at_what_they_were_sold_for_never_show_a_negative_tax():
    # Two pens at 3.33 with 0.01 off and no tax: the pen left keeps half the discount (0.005, to
    # 0.00 half-even) and no tax. Its total taken as its share of the line's (6.65 / 2, to 3.32)
    # would have left it a tax of -0.01.
    from core.unit_cancellation import kept_as_sold

    order = build_world([("PEN", "wh-east", 2)]).allocated(("PEN", 2))
    zero, cent = Money.of("0.00", "USD"), Money.of("0.01", "USD")
    line = order.lines[0].model_validate(
        {**dict(order.lines[0]), "discount": cent, "tax": zero, "total": Money.of("6.65", "USD")}
    )
    sold = order.model_validate({**dict(order), "lines": [line]})

    lines, totals = kept_as_sold(sold, {"L1": 1})

    (pen,) = lines.values()
    assert (pen.quantity, pen.discount, pen.tax, pen.total) == (1, zero, zero, Money.of("3.33", "USD"))
    assert totals.grand_total == pen.total + sold.totals.shipping


def test_units_kept_at_what_they_were_sold_for_keep_their_share_of_the_discount_and_tax_off_their_total():
    # Three pens at 3.33 with 0.30 off and 0.90 of tax, one cancelled: the two left keep 0.20 off and
    # 0.60 of tax, their total 6.66 - 0.20 + 0.60, and the order's subtotal counts both pens.
    from core.unit_cancellation import kept_as_sold

    order = build_world([("PEN", "wh-east", 3)]).allocated(("PEN", 3))
    usd = {name: Money.of(amount, "USD") for name, amount in (("off", "0.30"), ("tax", "0.90"), ("total", "10.59"))}
    line = order.lines[0].model_validate(
        {**dict(order.lines[0]), "discount": usd["off"], "tax": usd["tax"], "total": usd["total"]}
    )
    sold = order.model_validate({**dict(order), "lines": [line]})

    lines, totals = kept_as_sold(sold, {"L1": 1})

    (pens,) = lines.values()
    assert (pens.quantity, pens.discount, pens.tax) == (2, Money.of("0.20", "USD"), Money.of("0.60", "USD"))
    assert pens.total == Money.of("7.06", "USD")
    assert (totals.subtotal, totals.discount, totals.tax) == (Money.of("6.66", "USD"), pens.discount, pens.tax)
    assert totals.grand_total == pens.total + sold.totals.shipping


def test_a_partly_shipped_orders_cancel_that_would_raise_the_total_keeps_the_price_sold_and_the_rest_cancels():
    # One mug of three (at 2.00 from three) shipped from the west, two waiting in the east: one of
    # them cancelled keeps 2.00 a unit for the two left (priced again, the waiting one's capture
    # would be refused); the rest cancelled leaves the shipped mug, paid what it was sold for.
    world = build_world([("MUG", "wh-west", 1), ("MUG", "wh-east", 2)], CheapFromThree())
    order = world.allocated(("MUG", 3))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")

    one = world.actions.cancel(order.id, "one more is enough", actor="key_web", lines={"L1": 1})

    assert (one.status, one.lines[0].quantity, one.lines[0].unit_price) == (
        S.PARTIALLY_SHIPPED,
        2,
        Money.of("2.00", "USD"),
    )
    assert one.totals.grand_total < order.totals.grand_total
    done = world.actions.cancel(order.id, "the rest is not needed", actor="key_web")
    assert done.status is S.SHIPPED and done.lines[0].quantity == 1
    assert done.lines[0].unit_price == Money.of("2.00", "USD")
    after = world.order(order.id)
    assert after.payment.captured - after.payment.refunded == after.totals.grand_total


def test_a_rejected_parcel_of_a_partly_shipped_order_cancelled_out_of_stock_never_raises_what_the_rest_costs():
    # One mug of three (at 2.00 from three) shipped from the west; the east rejects the other two and
    # no location has more: they are cancelled out of stock, and the mug that left keeps 2.00 (priced
    # again alone it would cost 12.50, more than the three did).
    world = build_world([("MUG", "wh-west", 1), ("MUG", "wh-east", 2)], CheapFromThree())
    order = world.allocated(("MUG", 3))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")

    world.actions.reject(order.id, world.shipment_at(order, "wh-east"), "no stock after all", actor="key_wh_east")

    done = world.order(order.id)
    assert done.status is S.SHIPPED and (done.lines[0].quantity, done.lines[0].cancelled_quantity) == (1, 2)
    assert done.lines[0].unit_price == Money.of("2.00", "USD")
    assert done.totals.grand_total < order.totals.grand_total
    assert done.payment.captured - done.payment.refunded == done.totals.grand_total


def test_a_cancel_of_the_rest_whose_release_a_repeat_recorded_first_records_it_once(world, monkeypatch):
    # The client repeats the cancel of the rest while the first is between the gateway's release of
    # the authorization's rest and its write: the repeat records the release; the first adds none.
    order = world.allocated(("MUG", 2), ("CAP", 3))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    real = world.actions._payments.void

    def void(*args, **kwargs):
        world.actions._payments.void = real
        answer = real(*args, **kwargs)
        world.actions.cancel(order.id, "the rest is not needed", actor="key_web")
        return answer

    monkeypatch.setattr(world.actions._payments, "void", void)

    done = world.actions.cancel(order.id, "the rest is not needed", actor="key_web")

    released = [e for e in world.history(order.id) if e.type is OrderEvent.PAYMENT_VOIDED]
    assert len(released) == 1 and released[0].detail["reason"] == "nothing is left to ship"
    assert done.payment.authorized == done.payment.captured == done.totals.grand_total


def no_plugin_captures(world: World, order_id: str) -> list[str]:
    return [
        e.actor
        for e in world.history(order_id)
        if e.type is OrderEvent.PAYMENT_CAPTURE_FAILED and (e.detail or {}).get("kind") == "no_plugin"
    ]


@pytest.mark.parametrize("report", ["ship", "deliver"])
def test_a_standing_settlement_capture_asked_again_while_its_plugin_is_out_is_noted_once(monkeypatch, report):
    # The dead cancel's settlement request stands (the gateway may hold its 2.00): a warehouse's
    # ship, or a carrier's delivery report, of the last parcel repeated on a loop asks it again each
    # time and no plugin takes it. Its no_plugin attempt is on the history once, not once a repeat.
    removed = Removed()
    world = build_world(STOCK, PerUnitShipping(), removed)
    order = world.allocated(("MUG", 1), ("CAP", 3), shipping_method="per_unit")
    west = world.shipment_at(order, "wh-west")
    world.actions.ship(order.id, west, None, actor="key_wh")
    dies_before_recording(world, monkeypatch, "payment_captured")
    with pytest.raises(Died):
        world.actions.cancel(order.id, "no caps", actor="key_web")
    monkeypatch.undo()
    removed.gone = True
    actor = "key_wh" if report == "ship" else "key_carrier"

    def repeat() -> None:
        with contextlib.suppress(PaymentRefused):
            if report == "ship":
                world.actions.ship(order.id, west, None, actor=actor)
            else:
                world.actions.deliver(order.id, west, actor=actor)

    repeat()
    noted = world.history(order.id)
    assert no_plugin_captures(world, order.id) == [actor]  # the first is recorded

    for _ in range(4):
        repeat()

    assert world.history(order.id) == noted
    assert "capture_not_made" not in [h.type for h in noted]
    assert [(r.shipment_id, r.amount) for r in world.order(order.id).captures_requested] == [(None, TWO)]
    removed.gone = False
    world.actions.ship(order.id, west, None, actor="key_wh")  # the plugin back: asked under its key
    done = world.order(order.id)
    assert done.payment.captured == done.totals.grand_total and done.captures_requested == []


def test_a_dead_ships_capture_asked_again_by_its_ship_repeated_while_its_plugin_is_out_is_noted_once(monkeypatch):
    # The second parcel's ship died after the gateway captured its share; its plugin is then taken
    # out. The warehouse repeats that ship on a loop: each is 502, and its request stands.
    removed = Removed()
    world = build_world(STOCK, removed)
    order = world.allocated(("MUG", 1), ("CAP", 3))
    west, east = world.shipment_at(order, "wh-west"), world.shipment_at(order, "wh-east")
    world.actions.ship(order.id, west, None, actor="key_wh")
    ships_died(world, monkeypatch, order.id, [east])
    removed.gone = True
    with pytest.raises(PaymentRefused):
        world.actions.ship(order.id, east, None, actor="key_wh")
    noted = world.history(order.id)
    assert no_plugin_captures(world, order.id) == ["key_wh"]

    for _ in range(4):
        with pytest.raises(PaymentRefused):
            world.actions.ship(order.id, east, None, actor="key_wh")

    assert world.history(order.id) == noted
    assert [r.shipment_id for r in world.order(order.id).captures_requested] == [east]
    removed.gone = False
    done = world.actions.ship(order.id, east, None, actor="key_wh")
    assert (done.status, done.payment.captured) == (S.SHIPPED, done.totals.grand_total)
    assert no_plugin_captures(world, order.id) == ["key_wh"] and len(world.spy.captured) == 2


def test_a_cancel_of_units_retried_after_an_edit_sent_the_order_back_to_be_sourced_leaves_its_stock_held(world):
    # Sent back to be sourced, the order's workflow counts what it holds as its own and gives back
    # what it no longer needs: the client's retry of the cancel frees none of it for another order.
    order = world.allocated(("MUG", 3))
    world.actions.cancel(order.id, "one mug", actor="key_web", lines={"L1": 1}, request_key="k-1")
    now = world.order(order.id)
    moved = OrderEdit.model_validate({"shipping_address": {**now.shipping_address.model_dump(), "line2": "Apt 4"}})
    edited = world.actions.edit(order.id, now.version, moved, "key_cs")
    assert (edited.status, edited.allocations) == (S.AUTHORIZED, [])
    held = {("MUG", "wh-west", f"{order.id}#L1"): 2}
    assert world.held_for(order.id) == held

    again = world.actions.cancel(order.id, "one mug", actor="key_web", lines={"L1": 1}, request_key="k-1")

    assert (again.status, [line.quantity for line in again.lines]) == (S.AUTHORIZED, [2])
    assert world.held_for(order.id) == held
    assert world.level("MUG", "wh-west") == (5, 2, 3)


def test_units_cancelled_while_the_parcels_are_booked_have_the_rest_booked_under_a_new_key(monkeypatch):
    # The carrier answers a booking key with the booking it made for it: the retry's parcel, for
    # the units left, must not be handed the label booked for every unit before the cancel.
    carrier = RecordsBookings()
    world = build_world(STOCK, carrier)
    order_id = world.place(("MUG", 3))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)
    before_the_next_write(
        world, monkeypatch, lambda: world.actions.cancel(order_id, "one mug", actor="key_web", lines={"L1": 1})
    )

    with pytest.raises(TransientError):
        world.workflow.create_shipments(order_id)  # booked 3 units, then lost its write to the cancel
    world.workflow.create_shipments(order_id)  # the retry

    (shipment,) = world.order(order_id).shipments
    booked, rebooked = carrier.asked
    assert (booked[2], rebooked[2]) == ([("L1", 3)], [("L1", 2)])
    assert rebooked[0] == shipment.id != booked[0] and rebooked[1] != booked[1]
    assert shipment.label_url == f"labels/{order_id}/{rebooked[1]}"


def test_units_cancelled_between_reserving_and_booking_come_off_the_lines_last_allocations_first():
    # As a cancel of an allocated order takes them from its last parcels first.
    world = build_world([("MUG", "wh-west", 2), ("MUG", "wh-east", 2)])
    order_id = world.place(("MUG", 4))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)
    first, last = world.order(order_id).allocations
    assert (first.quantity, last.quantity) == (2, 2)

    done = world.actions.cancel(order_id, "one mug", actor="key_web", lines={"L1": 1})

    assert done.allocations == [first, last.model_copy(update={"quantity": 1})]
    assert world.held_for(order_id) == {
        ("MUG", first.location_id, f"{order_id}#L1"): 2,
        ("MUG", last.location_id, f"{order_id}#L1"): 1,
    }


def test_a_unit_cancel_of_a_replacements_last_mug_refunds_what_the_card_paid_beyond_what_the_credit_leaves():
    # A cap exchanged for three mugs: the card paid the two from the west beyond the cap's credit
    # (26.81 of a 45.22 order), then the east mug is cancelled. The order now costs 31.81, of which
    # the credit pays 8.33: the card holds 3.33 beyond its 23.48 and is refunded them at once. The
    # settlement's due (unit_cancellation._due) is what it owes less what it holds, negative here:
    # beyond_credit (nothing: the credit pays the rest) only caps it from above. Taken as a floor,
    # the due was nothing and the 3.33 stayed with the shop, given back from nowhere.
    world, _, order, replacement, west = three_mugs_for("CAP")
    world.actions.deliver(replacement.id, west, actor="key_wh")
    assert world.order(replacement.id).payment.captured == Money.of("26.81", "USD")

    world.actions.cancel(replacement.id, "no more mugs", actor="key_cs", lines={"L1": 1})

    left = world.order(replacement.id)
    credit = left.exchange_credit
    assert (left.totals.grand_total, credit) == (Money.of("31.81", "USD"), Money.of("8.33", "USD"))
    over = left.payment.captured - (left.totals.grand_total - credit)
    assert [(r.kind, r.amount, r.status) for r in left.payment.refunds] == [("cancellation", over, "succeeded")]
    assert over == Money.of("3.33", "USD")
    assert world.order(order.id).payment.refunds == []  # the credit is all used: nothing given back from it


def test_a_cancel_of_units_leaves_reserved_the_mugs_of_a_parcel_whose_ship_died_before_they_left(world, monkeypatch):
    # The west parcel's ship recorded the hand-over and died before its two mugs left on_hand; the
    # customer then cancels a cap of the east parcel. The cancel's stock step must leave the mugs'
    # reservation alone: released, the two mugs on their way to the customer would show as
    # available at the west and be sold again, and the ship sent again would find nothing to take.
    from tests.unit.test_hand_over_stock_finished import died_after_its_record

    order = world.allocated(("MUG", 2), ("CAP", 2))
    west = world.shipment_at(order, "wh-west")
    died_after_its_record(world, monkeypatch, order.id, west)

    world.actions.cancel(order.id, "one cap", actor="key_web", lines={"L2": 1})

    assert world.level("MUG", "wh-west") == (5, 2, 3)
    assert world.level("CAP", "wh-east") == (8, 1, 7)
    world.actions.ship(order.id, west, None, actor="key_wh")  # sent again: the mugs leave
    assert world.level("MUG", "wh-west") == (3, 0, 3)


def test_a_cancel_from_a_version_a_hold_overtook_before_its_write_cancels_nothing(world, monkeypatch):
    # The agent read the order allocated; a hold lands between the cancel's decision and its write.
    # The cancel's own write judges the version again: the held order is not cancelled, its stock
    # stays reserved and its authorization is not voided.
    order = world.allocated(("MUG", 2))
    held_stock = world.held_for(order.id)
    before_the_next_write(world, monkeypatch, lambda: Holds(world.orders).hold(
        order.id, HoldRequest(reason="fraud_review"), actor="key_ops"))  # fmt: skip

    with pytest.raises(StaleVersion):
        world.actions.cancel(order.id, "customer asked", actor="key_cs", expected_version=order.version)

    now = world.order(order.id)
    assert (now.status, now.version, now.payment.status) == (S.ON_HOLD, order.version + 1, P.AUTHORIZED)
    assert "cancelled" not in [entry.type for entry in world.history(order.id)]
    assert world.held_for(order.id) == held_stock and world.spy.voided == []


@pytest.mark.parametrize("lines", [None, {"L1": 1}], ids=["whole", "units"])
def test_a_cancel_from_a_stale_version_asks_and_writes_nothing(world, lines):
    order = world.allocated(("MUG", 2))
    moved = world.actions.edit(order.id, order.version, OrderEdit(shipping_method="express"), actor="key_cs")
    before = world.snapshot(order.id)

    with pytest.raises(StaleVersion) as refused:
        world.actions.cancel(order.id, "customer asked", actor="key_cs", lines=lines, expected_version=order.version)

    assert refused.value.details == [{"field": "If-Match", "message": f"current version is {moved.version}"}]
    assert world.snapshot(order.id) == before
