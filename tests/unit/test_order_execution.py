"""Changes after allocation and store execution (core.fulfillment.OrderActions): an allocated order
edited and sourced again, a location rejecting a shipment, a pickup readied, collected or expired;
on the in-memory fakes with the real built-in plugins and a fixed clock."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core.errors import (
    Conflict,
    InsufficientStock,
    InvalidTransition,
    NotFound,
    OrderHeld,
    OutOfStock,
    TransientError,
)
from core.events import OrderEvent
from core.holds import HoldRequest, Holds, ReleaseRequest
from core.models import Address, Allocation, LineInput, Order, OrderEdit
from core.money import Money
from core.status import OrderStatus, ShipmentStatus, can_transition
from tests.builders import NOW, address_body, location, place_order, product
from tests.unit.world import Died, World, before_the_next_write, dies_before_recording, ships_died

S = OrderStatus
H = ShipmentStatus

# MUG only in the west; TSHIRT in both warehouses and at the store, which offers pickup only.
STOCK = [
    ("TSHIRT", "wh-east", 10),
    ("TSHIRT", "wh-west", 10),
    ("TSHIRT", "store-sf", 5),
    ("MUG", "wh-west", 3),
    ("PEN", "wh-east", 20),
]
PICKUP = {"fulfillment": {"type": "pickup", "location_id": "store-sf"}}


def resume(world: World, order_id: str):
    """What the workflow started again by the status change does: its steps skip what is done."""
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)
    world.workflow.create_shipments(order_id)
    return world.order(order_id)


# --- The tables -----------------------------------------------------------------------------------


def test_the_tables_have_the_transitions_resourcing_and_pickups_need():
    assert can_transition(S.ALLOCATED, S.AUTHORIZED) and can_transition(S.BACKORDERED, S.AUTHORIZED)
    assert can_transition(S.ALLOCATED, S.DELIVERED)  # a pickup collected
    assert can_transition(H.PENDING, H.READY_FOR_PICKUP)
    assert can_transition(H.READY_FOR_PICKUP, H.DELIVERED) and can_transition(H.READY_FOR_PICKUP, H.CANCELLED)
    assert not can_transition(H.READY_FOR_PICKUP, H.SHIPPED)
    assert can_transition(H.PENDING, H.CANCELLED)  # its order cancelled
    assert not can_transition(S.PARTIALLY_SHIPPED, S.AUTHORIZED)


# --- Edit after allocation ------------------------------------------------------------------------


def test_an_allocated_order_edited_goes_back_to_authorized_and_the_workflow_sources_it_again(world):
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments

    edited = world.actions.edit(
        order.id, order.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=4)]), actor="key_web"
    )

    assert (edited.status, edited.allocations, edited.shipments) == (S.AUTHORIZED, [], [])
    assert edited == world.order(order.id)
    entry = next(e for e in world.history(order.id) if e.type == "edited")
    assert (entry.from_status, entry.to_status, entry.actor) == (S.ALLOCATED, S.AUTHORIZED, "key_web")
    assert entry.detail["released"] == [a.model_dump() for a in order.allocations]
    # The new line (L2: an edit's lines take new ids) has the old one's sku: its reservation waits
    # under the old id for the workflow, which counts it as its own and moves it under the new one.
    assert [line.line_id for line in edited.lines] == ["L2"]
    assert world.held_for(order.id) == {("TSHIRT", "wh-west", f"{order.id}#L1"): 2}

    again = resume(world, order.id)

    assert again.status is S.ALLOCATED
    assert [(a.line_id, a.location_id, a.quantity) for a in again.allocations] == [("L2", "wh-west", 4)]
    assert world.held_for(order.id) == {("TSHIRT", "wh-west", f"{order.id}#L2"): 4}
    assert world.level("TSHIRT", "wh-west") == (10, 4, 6)
    # A new parcel at the same warehouse, under an id of its own: a late confirmation of the one
    # the edit withdrew is refused as withdrawn, never applied to it (Order.parcel_id).
    assert [(s.location_id, s.id) for s in again.shipments] == [("wh-west", again.parcel_id("wh-west"))]
    assert again.shipments[0].id != shipment.id


def test_an_edit_that_replaces_a_lines_sku_releases_the_old_units_at_once(world):
    order = world.allocated(("MUG", 2))

    world.actions.edit(order.id, order.version, OrderEdit(lines=[LineInput(sku="PEN", quantity=1)]), actor="key_web")

    assert world.held_for(order.id) == {}
    assert world.level("MUG", "wh-west") == (3, 0, 3)
    again = resume(world, order.id)
    assert [(line.sku, line.quantity) for line in again.lines] == [("PEN", 1)]
    assert world.held_for(order.id) == {("PEN", "wh-east", f"{order.id}#L2"): 1}
    assert world.level("MUG", "wh-west") == (3, 0, 3)


@pytest.mark.parametrize("held", [False, True], ids=["sourcing", "on_hold"])
def test_an_edit_that_drops_a_line_before_another_keeps_the_units_the_line_left_holds(world, held):
    # The three MUGs in stock are this order's, under its second line. The edit dropping the PEN
    # gives the MUGs line a new id (L3): the units held under L2 are still the order's own, counted
    # as such by the edit's stock check. Released at once, another order took them and the edited order, sourced
    # again, ended cancelled out_of_stock.
    order = world.allocated(("PEN", 1), ("MUG", 3))
    if held:
        Holds(world.orders, clock=lambda: NOW).hold(order.id, HoldRequest(reason="address_review"), actor="key_ops")
        order = world.order(order.id)

    edited = world.actions.edit(order.id, order.version, OrderEdit(lines=[LineInput(sku="MUG", quantity=3)]),
                                actor="key_web")  # fmt: skip

    assert [(line.line_id, line.sku) for line in edited.lines] == [("L3", "MUG")]
    assert world.level("MUG", "wh-west") == (3, 3, 0)
    assert world.level("PEN", "wh-east") == (20, 0, 20)
    with pytest.raises(InsufficientStock):
        world.place(("MUG", 1), external_id="web-other")
    if held:
        Holds(world.orders, clock=lambda: NOW).release(order.id, ReleaseRequest(), actor="key_ops")
    again = resume(world, order.id)
    assert again.status is S.ALLOCATED
    assert world.held_for(order.id) == {("MUG", "wh-west", f"{order.id}#L3"): 3}


@pytest.mark.parametrize(
    ("before", "after", "held"),
    [
        ([("PEN", 1), ("MUG", 3)], [("MUG", 3)], {"L3": 3}),  # the MUG line's id changed: L2 -> L3
        ([("MUG", 2)], [("MUG", 3)], {"L2": 3}),  # grown, under its new id: L1 -> L2
        ([("MUG", 3)], [("MUG", 2), ("MUG", 1)], {"L2": 2, "L3": 1}),  # split over two lines
    ],
    ids=["line_id_changed", "grown", "split"],
)
def test_no_other_order_takes_the_units_an_edited_order_holds_while_it_is_sourced_again(
    world, monkeypatch, before, after, held
):
    # Every MUG in stock is this order's and its edit's stock check counted them as its own.
    # ReserveStock gave them back (a release, a shrink) and then reserved them again under the
    # lines' keys: another order's reservation landing in between took them, and the edited
    # order, sourced again on what was left, ended cancelled out_of_stock.
    order = world.allocated(*before)
    world.inventory.adjust("MUG", "wh-west", sum(q for sku, q in after if sku == "MUG") - 3, "counted")
    edited = world.actions.edit(
        order.id, order.version, OrderEdit(lines=[LineInput(sku=sku, quantity=q) for sku, q in after]),
        actor="key_web",
    )  # fmt: skip
    took: list[bool] = []

    def another_order_reserves(give_back):
        def given_back(*args, **kwargs):
            give_back(*args, **kwargs)
            if args[0] == "MUG" and not took:
                took.append(True)
                world.inventory.reserve("MUG", "wh-west", "ord_other#L1", world.level("MUG", "wh-west")[2])

        return given_back

    monkeypatch.setattr(world.inventory, "release", another_order_reserves(world.inventory.release))
    monkeypatch.setattr(world.inventory, "shrink", another_order_reserves(world.inventory.shrink))

    again = resume(world, edited.id)

    assert again.status is S.ALLOCATED
    assert world.held_for(order.id) == {("MUG", "wh-west", f"{order.id}#{line}"): q for line, q in held.items()}
    assert world.level("MUG", "wh-west")[1:] == (sum(held.values()), 0)


def test_an_edit_landing_while_the_order_is_sourced_again_leaves_it_the_units_its_lines_held(world, monkeypatch):
    # Edited to add a PEN before its MUGs (L2 and L3 now), the order is sourced again: its 3 MUGs
    # move from L1 to L3. A second edit (the PEN dropped again) lands before that step's write: the
    # MUGs' line is L4, their units under L3 still the order's (an edit keeps a sku's units under
    # the old key for the sourcing). The step that lost its write released them as its own reservation,
    # and the order, sourced again, had to win the last MUGs back from other orders.
    order = world.allocated(("MUG", 3))
    first = world.actions.edit(
        order.id, order.version, OrderEdit(lines=[LineInput(sku="PEN", quantity=1), LineInput(sku="MUG", quantity=3)]),
        actor="key_web",
    )  # fmt: skip
    back = OrderEdit(lines=[LineInput(sku="MUG", quantity=3)])
    before_the_next_write(
        world, monkeypatch, lambda: world.actions.edit(order.id, first.version, back, actor="key_web")
    )

    with pytest.raises(TransientError):
        world.workflow.reserve_stock(order.id)

    assert world.held_for(order.id) == {("MUG", "wh-west", f"{order.id}#L3"): 3}
    assert world.level("PEN", "wh-east") == (20, 0, 20)
    monkeypatch.undo()
    with pytest.raises(InsufficientStock):
        world.place(("MUG", 1), external_id="web-other")
    again = resume(world, order.id)
    assert again.status is S.ALLOCATED
    assert world.held_for(order.id) == {("MUG", "wh-west", f"{order.id}#L4"): 3}


def test_an_edit_whose_view_of_the_network_predates_a_new_location_releases_the_old_units_there(world):
    # As for a cancel: the API's network is cached for seconds, the workflow's is read fresh.
    actions = world.actions_behind_a_new_location("MUG", "wh-west")
    order = world.allocated(("MUG", 2))
    assert [a.location_id for a in order.allocations] == ["wh-north"]

    actions.edit(order.id, order.version, OrderEdit(lines=[LineInput(sku="PEN", quantity=1)]), actor="key_web")

    assert world.held_for(order.id) == {}
    assert world.level("MUG", "wh-north") == (5, 0, 5)


def test_a_backordered_order_edited_is_sourced_again_and_what_its_replaced_lines_held_is_released(world):
    order_id = world.place(("MUG", 2), ("PEN", 1))
    world.workflow.authorize_payment(order_id, attempt=0)
    authorized = world.order(order_id)
    # Backordered as a short reservation leaves it: what it could reserve (the PEN) is kept.
    world.inventory.reserve("PEN", "wh-east", f"{order_id}#L2", 1)
    kept = [Allocation(line_id="L2", location_id="wh-east", quantity=1)]
    world.orders.put(authorized.model_copy(update={"status": S.BACKORDERED, "allocations": kept}), "tok_approve")
    backordered = world.order(order_id)

    lines = [LineInput(sku="PEN", quantity=1), LineInput(sku="MUG", quantity=1)]

    edited = world.actions.edit(order_id, backordered.version, OrderEdit(lines=lines), actor="key_web")

    assert (edited.status, edited.allocations) == (S.AUTHORIZED, [])
    # The lines are L3 (PEN) and L4 (MUG) now: the PEN L2 held is still the order's, for its
    # sourcing to keep (under L3).
    assert [(line.line_id, line.sku) for line in edited.lines] == [("L3", "PEN"), ("L4", "MUG")]
    assert world.held_for(order_id) == {("PEN", "wh-east", f"{order_id}#L2"): 1}
    again = resume(world, order_id)
    assert again.status is S.ALLOCATED
    assert world.held_for(order_id) == {
        ("PEN", "wh-east", f"{order_id}#L3"): 1, ("MUG", "wh-west", f"{order_id}#L4"): 1,
    }  # fmt: skip


def test_a_grown_total_is_authorized_again_before_the_old_authorization_is_voided(world):
    order = world.allocated(("TSHIRT", 1))
    old = order.payment.authorization

    edited = world.actions.edit(
        order.id, order.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=3)]), actor="key_web"
    )

    assert edited.payment.authorized == edited.totals.grand_total
    assert edited.payment.authorization not in (None, old)
    assert world.spy.voided == [old]
    again = resume(world, order.id)
    (shipment,) = again.shipments
    shipped = world.actions.ship(order.id, shipment.id, None, actor="key_wh")
    assert shipped.payment.captured == shipped.totals.grand_total
    assert [auth for auth, _, _ in world.spy.captured] == [edited.payment.authorization]


def test_a_declined_reauthorization_leaves_the_allocated_order_and_its_stock_as_they_were(world):
    order = world.allocated(("TSHIRT", 1))
    held = world.held()
    world.orders.tokens[order.id] = "tok_decline"

    with pytest.raises(Conflict) as raised:
        world.actions.edit(
            order.id, order.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=3)]), actor="key_web"
        )

    assert raised.value.code == "payment_declined"
    after = world.order(order.id)  # unchanged but for the version of the edit's request
    assert after.model_dump(exclude={"version", "updated_at"}) == order.model_dump(exclude={"version", "updated_at"})
    assert world.held() == held
    assert world.spy.voided == []


def test_an_address_change_after_allocation_prices_shipping_and_tax_again(world):
    order = world.allocated(("TSHIRT", 2))
    oregon = Address.model_validate(address_body(city="Portland", region="OR", postal_code="97201"))

    edited = world.actions.edit(order.id, order.version, OrderEdit(shipping_address=oregon), actor="key_web")

    quote = world.capture.quote(
        place_order(lines=[{"sku": "TSHIRT", "quantity": 2}], shipping_address=oregon.model_dump())
    )
    assert (edited.lines, edited.totals) == (quote.lines, quote.totals)
    assert edited.totals.tax != order.totals.tax
    assert edited.shipping_address == oregon and edited.status is S.AUTHORIZED


def test_an_allocated_order_holding_the_last_units_counts_them_for_its_edit(world):
    # All 3 MUGs are this order's: an address change keeps them, taking fewer needs none more, and
    # one more than the network has is still refused.
    order = world.allocated(("MUG", 3))
    assert world.level("MUG", "wh-west") == (3, 3, 0)
    oregon = Address.model_validate(address_body(city="Portland", region="OR", postal_code="97201"))

    moved = world.actions.edit(order.id, order.version, OrderEdit(shipping_address=oregon), actor="key_web")
    again = resume(world, order.id)
    assert (moved.status, again.status, again.shipping_address) == (S.AUTHORIZED, S.ALLOCATED, oregon)
    fewer = world.actions.edit(
        order.id, again.version, OrderEdit(lines=[LineInput(sku="MUG", quantity=2)]), actor="key_web"
    )
    assert [line.quantity for line in resume(world, order.id).lines] == [2]
    assert world.level("MUG", "wh-west") == (3, 2, 1)
    current = world.order(order.id)
    with pytest.raises(InsufficientStock):
        world.actions.edit(order.id, current.version, OrderEdit(lines=[LineInput(sku="MUG", quantity=4)]),
                           actor="key_web")  # fmt: skip
    assert world.order(order.id) == current and fewer.version < current.version


def test_an_edit_after_a_reject_counts_no_stock_at_the_rejecting_location(world):
    # wh-west rejected it: only wh-east's 10 may supply it now. An edit to 11 accepted on the
    # network's 20 would be sourced again and end the order cancelled out_of_stock.
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    world.actions.reject(order.id, shipment.id, "damaged stock", actor="key_store")
    moved = resume(world, order.id)
    assert [s.location_id for s in moved.shipments] == ["wh-east"]

    with pytest.raises(InsufficientStock):
        world.actions.edit(
            order.id, moved.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=11)]), actor="key_web"
        )

    assert world.order(order.id) == moved
    world.actions.edit(order.id, moved.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=10)]), actor="k")
    assert [(s.location_id, s.lines[0].quantity) for s in resume(world, order.id).shipments] == [("wh-east", 10)]


def test_an_address_change_of_an_order_holding_the_last_units_counts_them_as_its_own(world):
    # The three MUGs in stock are this order's: an edit that keeps them asks for nothing more.
    order = world.allocated(("MUG", 3))
    assert world.level("MUG", "wh-west") == (3, 3, 0)

    edited = world.actions.edit(order.id, order.version, OrderEdit(shipping_method="express"), actor="key_web")

    assert (edited.status, edited.shipping_method) == (S.AUTHORIZED, "express")
    again = resume(world, order.id)
    assert again.status is S.ALLOCATED
    assert world.held_for(order.id) == {("MUG", "wh-west", f"{order.id}#L1"): 3}
    assert world.level("MUG", "wh-west") == (3, 3, 0)


@pytest.mark.parametrize("held", [False, True], ids=["sourcing", "on_hold"])
def test_a_second_edit_before_the_order_is_sourced_again_releases_a_removed_line_and_counts_its_own_units(world, held):
    # The first edit sends the order back to be sourced with its reservations kept for the
    # workflow; a second one lands before that (at once, or while a person holds the order). The
    # PENs of the line it removes stayed reserved for an order that no longer has them, forever
    # (even its cancel releases only its lines' units); and its own three MUGs counted as taken.
    order = world.allocated(("MUG", 3), ("PEN", 2))  # west: MUG, east: PEN
    if held:
        Holds(world.orders, clock=lambda: NOW).hold(order.id, HoldRequest(reason="address_review"), actor="key_ops")
        order = world.order(order.id)
    first = world.actions.edit(order.id, order.version, OrderEdit(shipping_method="express"), actor="key_web")
    assert world.level("PEN", "wh-east") == (20, 2, 18)

    second = world.actions.edit(
        order.id, first.version, OrderEdit(lines=[LineInput(sku="MUG", quantity=3)]), actor="key_web"
    )

    assert [(line.line_id, line.sku, line.quantity) for line in second.lines] == [("L3", "MUG", 3)]
    assert world.level("PEN", "wh-east") == (20, 0, 20)
    if held:
        Holds(world.orders, clock=lambda: NOW).release(order.id, ReleaseRequest(), actor="key_ops")
    again = resume(world, order.id)
    assert again.status is S.ALLOCATED
    assert world.held_for(order.id) == {("MUG", "wh-west", f"{order.id}#L3"): 3}


def test_an_edit_asking_for_more_than_the_stock_and_its_own_reservation_is_still_refused(world):
    order = world.allocated(("MUG", 3))

    with pytest.raises(InsufficientStock):
        world.actions.edit(order.id, order.version, OrderEdit(lines=[LineInput(sku="MUG", quantity=4)]),
                           actor="key_web")  # fmt: skip

    assert world.order(order.id) == order
    assert world.held_for(order.id) == {("MUG", "wh-west", f"{order.id}#L1"): 3}


def test_an_address_change_after_a_line_was_cancelled_whole_keeps_the_lines_as_they_are(world):
    order = world.allocated(("TSHIRT", 2), ("PEN", 1))
    cancelled = world.actions.cancel(order.id, "no pen", actor="key_web", lines={"L2": 1})
    assert [(line.quantity, line.cancelled_quantity) for line in cancelled.lines] == [(2, 0), (0, 1)]
    oregon = Address.model_validate(address_body(city="Portland", region="OR", postal_code="97201"))

    edited = world.actions.edit(order.id, cancelled.version, OrderEdit(shipping_address=oregon), actor="key_web")

    quote = world.capture.quote(
        place_order(lines=[{"sku": "TSHIRT", "quantity": 2}], shipping_address=oregon.model_dump())
    )
    tshirt, pen = edited.lines
    assert tshirt == quote.lines[0]
    assert (pen.line_id, pen.sku, pen.quantity, pen.cancelled_quantity) == ("L2", "PEN", 0, 1)
    assert pen.total == Money.zero("USD")
    assert edited.totals == quote.totals
    again = resume(world, order.id)
    assert again.status is S.ALLOCATED
    assert world.held_for(order.id) == {("TSHIRT", "wh-west", f"{order.id}#L1"): 2}


def test_an_edit_sent_right_after_a_change_is_judged_on_the_order_as_written(world, monkeypatch):
    # GetItem is eventually consistent: just after a hold or an edit answered version N, a plain
    # read may still show N - 1. The If-Match the caller sends is the version it was answered.
    order = world.allocated(("TSHIRT", 2))
    changed = world.actions.edit(order.id, order.version, OrderEdit(shipping_method="express"), actor="key_web")
    real = world.orders.get_with_token

    def lagging(order_id, consistent=False):
        return real(order_id) if consistent else (order, world.orders.tokens[order_id])

    monkeypatch.setattr(world.orders, "get_with_token", lagging)

    edited = world.actions.edit(order.id, changed.version, OrderEdit(shipping_method="standard"), actor="key_web")

    assert (edited.version, edited.shipping_method) == (changed.version + 1, "standard")


def test_an_order_is_no_longer_editable_once_a_shipment_left(world):
    order = world.allocated(("TSHIRT", 2), ("MUG", 1), ("PEN", 1))  # west: TSHIRT + MUG, east: PEN
    west = world.shipment_at(order, "wh-west")
    partly = world.actions.ship(order.id, west, None, actor="key_wh")

    with pytest.raises(InvalidTransition):
        world.actions.edit(order.id, partly.version, OrderEdit(shipping_method="express"), actor="key_web")

    assert world.order(order.id) == partly


# --- Reject ---------------------------------------------------------------------------------------


def test_a_rejected_shipment_is_sourced_again_from_another_location(world):
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    assert shipment.location_id == "wh-west"

    rejected = world.actions.reject(order.id, shipment.id, "damaged stock", actor="key_store")

    assert (rejected.status, rejected.allocations, rejected.shipments) == (S.AUTHORIZED, [], [])
    assert rejected.excluded_locations == ["wh-west"]
    assert "excluded_locations" not in rejected.model_dump()  # the system's own, never shown
    assert world.level("TSHIRT", "wh-west") == (10, 0, 10)
    entry, booking = world.history(order.id)[-2:]  # then the rejected parcel's booking is cancelled
    assert (entry.type, entry.from_status, entry.to_status, entry.actor) == (
        "shipment_rejected", S.ALLOCATED, S.AUTHORIZED, "key_store",
    )  # fmt: skip
    assert (booking.type, booking.detail["shipment_id"]) == ("carrier_booking_cancelled", shipment.id)
    assert {k: entry.detail[k] for k in ("shipment_id", "location_id", "reason")} == {
        "shipment_id": shipment.id, "location_id": "wh-west", "reason": "damaged stock",
    }  # fmt: skip

    again = resume(world, order.id)

    assert again.status is S.ALLOCATED
    assert [s.location_id for s in again.shipments] == ["wh-east"]
    assert world.held_for(order.id) == {("TSHIRT", "wh-east", f"{order.id}#L1"): 2}


def test_a_held_orders_shipment_is_rejected_and_the_release_sources_it_again(world):
    # A warehouse that finds the stock damaged while the order waits for a review reports it at
    # once (it was 409 until the release): the order stays on hold, nothing is sourced meanwhile.
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    Holds(world.orders, clock=lambda: NOW).hold(order.id, HoldRequest(reason="address_review"), actor="key_ops")

    rejected = world.actions.reject(order.id, shipment.id, "damaged stock", actor="key_store")

    assert (rejected.status, rejected.allocations, rejected.shipments) == (S.ON_HOLD, [], [])
    assert rejected.hold is not None and rejected.hold.reason == "address_review"
    assert rejected.excluded_locations == ["wh-west"]
    assert world.level("TSHIRT", "wh-west") == (10, 0, 10)
    assert [h.type for h in world.history(order.id)][-2:] == ["shipment_rejected", "carrier_booking_cancelled"]
    with pytest.raises(OrderHeld):
        world.workflow.reserve_stock(order.id)

    released = Holds(world.orders, clock=lambda: NOW).release(order.id, ReleaseRequest(), actor="key_ops")
    assert released.status is S.AUTHORIZED
    again = resume(world, order.id)
    assert [s.location_id for s in again.shipments] == ["wh-east"]
    assert world.held_for(order.id) == {("TSHIRT", "wh-east", f"{order.id}#L1"): 2}


def test_an_order_with_a_line_cancelled_whole_is_sourced_again_after_a_reject(world):
    # The cancelled line keeps its place with no units: sourcing covers the lines that have some.
    order = world.allocated(("TSHIRT", 2), ("PEN", 1))
    world.actions.cancel(order.id, "no pen", actor="key_web", lines={"L2": 1})
    west = world.shipment_at(world.order(order.id), "wh-west")
    world.actions.reject(order.id, west, "damaged stock", actor="key_store")

    again = resume(world, order.id)

    assert again.status is S.ALLOCATED
    assert [(a.line_id, a.location_id, a.quantity) for a in again.allocations] == [("L1", "wh-east", 2)]
    assert world.held_for(order.id) == {("TSHIRT", "wh-east", f"{order.id}#L1"): 2}


def test_a_reject_whose_release_never_ran_leaves_nothing_held_at_that_location_once_sourced_again(world, monkeypatch):
    # The reject is recorded, then its request dies before it releases (a Lambda timeout) and is
    # not repeated. The workflow the status change restarts never reserves there again for this
    # order, so it gives back what the order still holds there.
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    monkeypatch.setattr(world.actions, "_release_lines", lambda *args: None)
    world.actions.reject(order.id, shipment.id, "damaged stock", actor="key_store")
    assert world.held_for(order.id) == {("TSHIRT", "wh-west", f"{order.id}#L1"): 2}

    again = resume(world, order.id)

    assert [s.location_id for s in again.shipments] == ["wh-east"]
    assert world.held_for(order.id) == {("TSHIRT", "wh-east", f"{order.id}#L1"): 2}
    assert world.level("TSHIRT", "wh-west") == (10, 0, 10)


def test_a_rejected_split_order_keeps_what_it_holds_elsewhere_for_the_workflow(world):
    order = world.allocated(("MUG", 1), ("PEN", 2))  # west: MUG, east: PEN
    east = world.shipment_at(order, "wh-east")

    world.actions.reject(order.id, east, "no staff", actor="key_wh")

    assert world.held_for(order.id) == {("MUG", "wh-west", f"{order.id}#L1"): 1}
    with pytest.raises(OutOfStock):  # PEN is only in the east, which refused it
        resume(world, order.id)


def test_both_locations_of_a_split_order_rejecting_at_once_are_both_excluded(world):
    # The east's reject sent the order back to be sourced and withdrew the west's shipment before
    # the west's own reject arrived: that reject was 404, and sourcing could pick the west again.
    order = world.allocated(("MUG", 1), ("PEN", 2))  # west: MUG, east: PEN
    west, east = world.shipment_at(order, "wh-west"), world.shipment_at(order, "wh-east")
    world.actions.reject(order.id, east, "no staff", actor="key_wh_east")

    rejected = world.actions.reject(order.id, west, "no staff either", actor="key_wh_west")

    assert (rejected.status, set(rejected.excluded_locations)) == (S.AUTHORIZED, {"wh-west", "wh-east"})
    last = world.history(order.id)[-1]
    assert (last.type, last.actor, last.detail["location_id"], last.detail["withdrawn"]) == (
        "shipment_rejected", "key_wh_west", "wh-west", True,
    )  # fmt: skip
    assert world.held_for(order.id) == {}  # the west's units go back too
    assert world.actions.reject(order.id, west, "no staff either", actor="key_wh_west") == rejected  # once
    with pytest.raises(NotFound):  # a shipment the order never had is still unknown
        world.actions.reject(order.id, "shp_" + "a" * 24, "unknown", actor="key_wh")


def test_a_late_reject_of_a_withdrawn_parcel_is_refused_while_its_location_holds_the_replacement(world):
    # The edit withdrew the west's parcel and the workflow made a new one there. The west's late
    # reject of the first excluded the west while the new parcel stayed there to ship: the next
    # sourcing moved it away without the warehouse ever rejecting it.
    order = world.allocated(("TSHIRT", 2))
    (old,) = order.shipments
    world.actions.edit(order.id, order.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=4)]), actor="key_web")
    again = resume(world, order.id)
    assert [s.location_id for s in again.shipments] == ["wh-west"]

    with pytest.raises(InvalidTransition, match=f"shipment {old.id} was withdrawn") as refused:
        world.actions.reject(order.id, old.id, "no staff", actor="key_wh_west")

    assert refused.value.details == [{"shipment_id": old.id, "location_id": "wh-west", "withdrawn_by": "edited"}]
    assert world.order(order.id) == again
    with pytest.raises(InvalidTransition, match="holds parcel"):  # the model refuses it too
        again.reject_withdrawn(old.id, "wh-west", "no staff", at=NOW, actor="key_wh_west")


def test_a_reject_with_no_other_location_ends_the_order_out_of_stock(world):
    order = world.allocated(("TSHIRT", 1), **PICKUP)
    (shipment,) = order.shipments
    world.actions.reject(order.id, shipment.id, "no staff", actor="key_store")

    with pytest.raises(OutOfStock):
        world.workflow.reserve_stock(order.id)
    world.workflow.cancel_after_failure(order.id, "OutOfStock", "{}")

    cancelled = world.order(order.id)
    assert (cancelled.status, cancelled.payment.status) == (S.CANCELLED, "voided")
    assert world.history(order.id)[-2].detail["reason"] == "out_of_stock"
    assert world.level("TSHIRT", "store-sf") == (5, 0, 5)


def test_a_pickup_rejected_by_its_store_ends_out_of_stock_even_when_its_product_may_wait(world):
    # The store is the only place a pickup order is sourced from: once it rejected, no arrival
    # anywhere could fill the order, so waiting backordered would be waiting for ever.
    from tests.builders import product

    world.catalog.put_product(product("TSHIRT", "19.99", allow_backorder=True))
    order = world.allocated(("TSHIRT", 1), **PICKUP)
    (shipment,) = order.shipments
    world.actions.reject(order.id, shipment.id, "damaged stock", actor="key_store")

    with pytest.raises(OutOfStock):
        world.workflow.reserve_stock(order.id)


def test_a_pickup_ready_for_its_customer_is_not_rejected_and_stays_ready(world):
    # Only a pending shipment is rejected (API.md): one the store picked waits for its customer,
    # and the store's way out is the expiry, or a cancel of the order.
    order = world.allocated(("TSHIRT", 1), **PICKUP)
    (shipment,) = order.shipments
    ready = world.actions.ready(order.id, shipment.id, actor="key_store")

    with pytest.raises(InvalidTransition, match="only a pending one can be rejected"):
        world.actions.reject(order.id, shipment.id, "damaged stock", actor="key_store")

    assert world.order(order.id) == ready
    assert world.level("TSHIRT", "store-sf") == (5, 1, 4)


def test_rejecting_again_changes_nothing(world):
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    first = world.actions.reject(order.id, shipment.id, "damaged stock", actor="key_store")
    history = world.history(order.id)

    assert world.actions.reject(order.id, shipment.id, "damaged stock", actor="key_store") == first
    assert world.history(order.id) == history


def test_only_a_pending_shipment_can_be_rejected(world):
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    shipped = world.actions.ship(order.id, shipment.id, None, actor="key_wh")

    with pytest.raises(InvalidTransition):
        world.actions.reject(order.id, shipment.id, "too late", actor="key_wh")
    with pytest.raises(NotFound):
        world.actions.reject(order.id, "shp_" + "a" * 24, "unknown", actor="key_wh")

    assert world.order(order.id) == shipped


# --- Pickup ---------------------------------------------------------------------------------------


def test_a_pickup_readied_waits_for_its_customer_until_the_expiry(world):
    order = world.allocated(("TSHIRT", 2), **PICKUP)
    (shipment,) = order.shipments

    ready = world.actions.ready(order.id, shipment.id, actor="key_store")

    (waiting,) = ready.shipments
    assert (ready.status, waiting.status, waiting.ready_at, waiting.collect_by) == (
        S.ALLOCATED, H.READY_FOR_PICKUP, NOW, NOW + timedelta(days=7),
    )  # fmt: skip
    assert world.history(order.id)[-1].type == "shipment_ready_for_pickup"
    assert world.actions.ready(order.id, shipment.id, actor="key_store") == ready  # a repeat changes nothing
    assert world.level("TSHIRT", "store-sf") == (5, 2, 3)


def test_only_a_pickup_is_made_ready(world):
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments

    with pytest.raises(InvalidTransition):
        world.actions.ready(order.id, shipment.id, actor="key_wh")

    assert world.order(order.id) == order


def test_a_held_orders_pickup_is_not_made_ready(world):
    # A person stopped the order (a fraud review): its store does not put the parcel out for the customer.
    order = world.allocated(("TSHIRT", 2), **PICKUP)
    (shipment,) = order.shipments
    held = Holds(world.orders, clock=lambda: NOW).hold(
        order.id, HoldRequest(reason="fraud_review", note=None), actor="key_ops"
    )

    with pytest.raises(InvalidTransition):
        world.actions.ready(order.id, shipment.id, actor="key_store")

    assert world.order(order.id) == held


def test_a_delivered_parcel_of_an_order_shipped_home_is_not_made_ready(world):
    # A pickup collected since is readied again as it stands (a store's wave sent again); a parcel
    # shipped home and delivered never was a pickup: readying it is refused, not answered unchanged.
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    world.actions.ship(order.id, shipment.id, None, actor="key_wh")
    delivered = world.actions.deliver(order.id, shipment.id, actor="key_carrier")

    with pytest.raises(InvalidTransition):
        world.actions.ready(order.id, shipment.id, actor="key_store")

    assert world.order(order.id) == delivered


def test_a_collected_pickup_captures_its_share_then_and_its_units_leave(world):
    order = world.allocated(("TSHIRT", 2), **PICKUP)
    (shipment,) = order.shipments
    ready = world.actions.ready(order.id, shipment.id, actor="key_store")
    assert ready.payment.captured.amount == 0

    with pytest.raises(InvalidTransition):  # a carrier's tracking never collects a pickup
        world.actions.deliver(order.id, shipment.id, actor="key_carrier")
    collected = world.actions.deliver_or_collect(order.id, shipment.id, actor="key_store")

    (done,) = collected.shipments
    assert (collected.status, done.status, done.delivered_at) == (S.DELIVERED, H.DELIVERED, NOW)
    assert collected.payment.status == "captured"
    assert collected.payment.captured == collected.totals.grand_total == done.captured
    assert world.level("TSHIRT", "store-sf") == (3, 0, 3)
    assert world.actions.deliver_or_collect(order.id, shipment.id, actor="key_store") == collected
    assert len(world.spy.captured) == 1


def test_a_collected_pickups_lines_count_the_units_handed_over_as_shipped(world):
    # `shipped_quantity` counts the units that left: a pickup's leave with the customer.
    order = world.allocated(("TSHIRT", 2), **PICKUP)
    (shipment,) = order.shipments
    ready = world.actions.ready(order.id, shipment.id, actor="key_store")
    assert [line.shipped_quantity for line in ready.lines] == [0]

    collected = world.actions.collect(order.id, shipment.id, actor="key_store")

    assert [(line.quantity, line.shipped_quantity) for line in collected.lines] == [(2, 2)]
    assert collected == world.order(order.id)


def test_a_collected_exchange_pickup_whose_credit_paid_part_of_it_is_captured(world):
    # A pickup order's exchange is a pickup too; its payment covers what the credit does not.
    credit = Money(amount="10.00", currency="USD")
    cmd = place_order(external_id="web-1001-x1", lines=[{"sku": "TSHIRT", "quantity": 2}], **PICKUP)
    order_id = world.capture.place_exchange(cmd, credit, "ord_original", "rma_1", actor="returns").id
    order = resume(world, order_id)
    (shipment,) = order.shipments
    world.actions.ready(order.id, shipment.id, actor="key_store")

    collected = world.actions.collect(order.id, shipment.id, actor="key_store")

    assert collected.payment.captured == collected.payable() == collected.totals.grand_total - credit
    assert collected.payment.status == "captured"


def test_a_collected_pickup_that_lost_units_releases_the_rest_of_its_authorization(world):
    # As the last parcel of a shipped order that lost units does: nothing is left to capture.
    order = world.allocated(("TSHIRT", 3), **PICKUP)
    (shipment,) = order.shipments
    world.actions.cancel(order.id, "one fewer", actor="key_web", lines={"L1": 1})
    world.actions.ready(order.id, shipment.id, actor="key_store")

    collected = world.actions.collect(order.id, shipment.id, actor="key_store")

    assert collected.payment.captured == collected.totals.grand_total
    assert collected.payment.authorized == collected.payment.captured
    assert world.spy.voided == [order.payment.authorization]


def test_a_held_pickup_is_not_collected_and_nothing_is_captured_for_it(world):
    order = world.allocated(("TSHIRT", 2), **PICKUP)
    (shipment,) = order.shipments
    world.actions.ready(order.id, shipment.id, actor="key_store")
    held = Holds(world.orders, clock=lambda: NOW).hold(
        order.id, HoldRequest(reason="fraud_review", note=None), actor="key_ops"
    )

    with pytest.raises(InvalidTransition):
        world.actions.deliver_or_collect(order.id, shipment.id, actor="key_store")

    assert world.order(order.id) == held
    assert (world.spy.captured, world.spy.refunded) == ([], [])  # no charge taken back at once
    assert world.level("TSHIRT", "store-sf") == (5, 2, 3)


def test_a_ready_pickup_is_not_shipped(world):
    order = world.allocated(("TSHIRT", 2), **PICKUP)
    (shipment,) = order.shipments
    ready = world.actions.ready(order.id, shipment.id, actor="key_store")

    with pytest.raises(InvalidTransition):
        world.actions.ship(order.id, shipment.id, None, actor="key_store")

    assert world.order(order.id) == ready
    assert world.level("TSHIRT", "store-sf") == (5, 2, 3)


def test_a_pickup_waiting_to_be_picked_is_not_shipped_either(world):
    # A pickup goes pending -> ready_for_pickup -> delivered (collected, and paid for then): a ship
    # would capture it and call it shipped while the customer waits for it at the store.
    order = world.allocated(("TSHIRT", 2), **PICKUP)
    (shipment,) = order.shipments

    with pytest.raises(InvalidTransition, match="pickup"):
        world.actions.ship(order.id, shipment.id, "1Z999", actor="key_store")

    assert world.order(order.id) == order
    assert (world.spy.captured, world.spy.refunded) == ([], [])
    assert world.level("TSHIRT", "store-sf") == (5, 2, 3)


def test_a_collected_pickup_is_not_shipped_either(world):
    # Collected is delivered for a pickup, which never ships: a ship of it is refused (409) as
    # before it was collected, not answered as if it had shipped.
    order = world.allocated(("TSHIRT", 2), **PICKUP)
    (shipment,) = order.shipments
    world.actions.ready(order.id, shipment.id, actor="key_store")
    collected = world.actions.collect(order.id, shipment.id, actor="key_store")

    with pytest.raises(InvalidTransition, match="pickup"):
        world.actions.ship(order.id, shipment.id, "1Z999", actor="key_store")

    assert world.order(order.id) == collected
    assert len(world.spy.captured) == 1
    assert world.level("TSHIRT", "store-sf") == (3, 0, 3)


def test_an_uncollected_pickup_expires_its_units_go_back_and_its_authorization_is_voided(world, monkeypatch):
    order = world.allocated(("TSHIRT", 2), **PICKUP)
    (shipment,) = order.shipments
    world.actions.ready(order.id, shipment.id, actor="key_store")

    with pytest.raises(InvalidTransition):  # not due yet
        world.actions.expire_pickup(order.id, shipment.id, actor="scheduler")
    monkeypatch.setattr(world.actions, "_clock", lambda: NOW + timedelta(days=7, seconds=1))
    expired = world.actions.expire_pickup(order.id, shipment.id, actor="scheduler")

    (gone,) = expired.shipments
    assert (expired.status, gone.status, expired.payment.status) == (S.CANCELLED, H.CANCELLED, "voided")
    assert expired.allocations == []
    assert world.level("TSHIRT", "store-sf") == (5, 0, 5)
    entry = next(e for e in world.history(order.id) if e.type == "pickup_expired")
    assert (entry.to_status, entry.detail["reason"], entry.actor) == (S.CANCELLED, "pickup_expired", "scheduler")
    assert world.actions.expire_pickup(order.id, shipment.id, actor="scheduler") == expired
    with pytest.raises(InvalidTransition):
        world.actions.deliver_or_collect(order.id, shipment.id, actor="key_store")


def test_a_ship_that_loses_to_a_reject_refunds_its_capture(world, monkeypatch):
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    # The reject lands while the ship waits for the gateway (after it requested the capture).
    before_the_next_write(
        world, monkeypatch, lambda: world.actions.reject(order.id, shipment.id, "no staff", actor="key_store"), skip=1
    )

    with pytest.raises(InvalidTransition):
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")

    current = world.order(order.id)
    assert (current.status, current.payment.captured.amount) == (S.AUTHORIZED, 0)
    assert [amount for _, amount, _ in world.spy.refunded] == [order.totals.grand_total]
    assert [h.type for h in world.history(order.id)][-5:] == [
        "allocated", "capture_withdrawn", "payment_capture_reversed", "shipment_rejected", "carrier_booking_cancelled",
    ]  # fmt: skip
    assert current.captures_requested == []
    assert world.level("TSHIRT", "wh-west") == (10, 0, 10)


def test_cancelling_an_order_with_a_ready_pickup_cancels_the_pickup_and_releases_its_units(world):
    order = world.allocated(("TSHIRT", 2), **PICKUP)
    (shipment,) = order.shipments
    world.actions.ready(order.id, shipment.id, actor="key_store")

    cancelled = world.actions.cancel(order.id, "customer asked", actor="key_web")

    (gone,) = cancelled.shipments
    assert (cancelled.status, gone.status, cancelled.pickup_deadline()) == (S.CANCELLED, H.CANCELLED, None)
    assert cancelled.allocations == []
    assert world.level("TSHIRT", "store-sf") == (5, 0, 5)
    assert cancelled.payment.status == "voided" and world.spy.voided == [order.payment.authorization]
    assert world.spy.captured == []


def test_a_ready_pickup_loses_units_its_shipment_shrinks_and_the_rest_is_paid_when_collected(world):
    # Waiting at the store is not shipped: its units can be cancelled, and nothing is captured or
    # released early for the units left, which the customer still collects and pays for then.
    order = world.allocated(("TSHIRT", 3), **PICKUP)
    (shipment,) = order.shipments
    ready = world.actions.ready(order.id, shipment.id, actor="key_store")

    smaller = world.actions.cancel(order.id, "one fewer", actor="key_web", lines={"L1": 1})

    (waiting,) = smaller.shipments
    assert (smaller.status, waiting.status, waiting.collect_by) == (
        S.ALLOCATED, H.READY_FOR_PICKUP, NOW + timedelta(days=7),
    )  # fmt: skip
    assert [(item.line_id, item.quantity) for item in waiting.lines] == [("L1", 2)]
    assert [(line.quantity, line.cancelled_quantity) for line in smaller.lines] == [(2, 1)]
    assert [(a.location_id, a.quantity) for a in smaller.allocations] == [("store-sf", 2)]
    assert smaller.pickup_deadline() == ready.pickup_deadline()
    assert world.level("TSHIRT", "store-sf") == (5, 2, 3)
    assert (world.spy.captured, world.spy.voided, world.spy.refunded) == ([], [], [])
    assert smaller.payment.authorized == order.payment.authorized

    collected = world.actions.collect(order.id, shipment.id, actor="key_store")

    assert collected.status is S.DELIVERED
    assert collected.payment.captured == collected.payment.authorized == collected.totals.grand_total
    assert [amount for _, amount, _ in world.spy.captured] == [smaller.totals.grand_total]
    assert world.spy.voided == [order.payment.authorization]
    assert world.level("TSHIRT", "store-sf") == (3, 0, 3)


def test_every_unit_of_a_ready_pickup_cancelled_cancels_the_order_and_its_pickup(world):
    order = world.allocated(("TSHIRT", 2), **PICKUP)
    (shipment,) = order.shipments
    world.actions.ready(order.id, shipment.id, actor="key_store")

    cancelled = world.actions.cancel(order.id, "not needed", actor="key_web", lines={"L1": 2})

    (gone,) = cancelled.shipments
    assert (cancelled.status, gone.status, cancelled.payment.status) == (S.CANCELLED, H.CANCELLED, "voided")
    assert world.level("TSHIRT", "store-sf") == (5, 0, 5)
    assert world.spy.captured == []


def test_a_pickup_whose_collect_died_after_the_capture_is_not_expired_under_it(world, monkeypatch):
    # The store's collect died between the gateway's capture and the order's write: the customer was
    # at the counter and most likely took the parcel. Expiring it would refund the capture and put
    # the units back on sale; it is left to a repeated collect or, once late, to the jeopardy scan's
    # capture sweep, which holds the order for a person (tests/unit/test_pickup_expiry.py).
    order = world.allocated(("TSHIRT", 2), **PICKUP)
    (shipment,) = order.shipments
    world.actions.ready(order.id, shipment.id, actor="key_store")
    real = world.orders.update

    def dies_recording_the_collect(new, expected, entries, **conditions):
        if entries and entries[0].type == "shipment_delivered":
            raise TimeoutError("Task timed out")
        real(new, expected, entries, **conditions)

    monkeypatch.setattr(world.orders, "update", dies_recording_the_collect)
    with pytest.raises(TimeoutError):
        world.actions.deliver_or_collect(order.id, shipment.id, actor="key_store")
    monkeypatch.undo()
    assert [r.shipment_id for r in world.order(order.id).captures_requested] == [shipment.id]
    monkeypatch.setattr(world.actions, "_clock", lambda: NOW + timedelta(days=7, seconds=1))

    with pytest.raises(InvalidTransition, match="being collected"):
        world.actions.expire_pickup(order.id, shipment.id, actor="scheduler")

    kept = world.order(order.id)
    assert (kept.status, [r.shipment_id for r in kept.captures_requested]) == (S.ALLOCATED, [shipment.id])
    assert [amount for _, amount, _ in world.spy.captured] == [order.totals.grand_total]
    assert world.spy.refunded == []
    assert "pickup_expired" not in [e.type for e in world.history(order.id)]


def test_a_collect_interrupted_before_its_units_left_is_finished_by_collecting_again(world, monkeypatch):
    # The collect is recorded, then its request dies before the units leave on_hand (a Lambda
    # timeout): the store's retry of POST .../deliver takes them off, as a repeated ship does.
    order = world.allocated(("TSHIRT", 2), **PICKUP)
    (shipment,) = order.shipments
    world.actions.ready(order.id, shipment.id, actor="key_store")
    real_ship = world.inventory.ship

    def dies(*args, **kwargs):
        raise RuntimeError("the function timed out")

    monkeypatch.setattr(world.inventory, "ship", dies)
    with pytest.raises(RuntimeError):
        world.actions.deliver_or_collect(order.id, shipment.id, actor="key_store")
    assert world.order(order.id).status is S.DELIVERED
    monkeypatch.setattr(world.inventory, "ship", real_ship)

    again = world.actions.deliver_or_collect(order.id, shipment.id, actor="key_store")

    assert again == world.order(order.id)
    assert world.level("TSHIRT", "store-sf") == (3, 0, 3)
    assert world.held_for(order.id) == {}
    assert len(world.spy.captured) == 1


def test_a_collect_of_an_order_that_lost_units_repeated_finishes_the_settlement(world):
    order = world.allocated(("TSHIRT", 3), **PICKUP)
    (shipment,) = order.shipments
    world.actions.cancel(order.id, "one fewer", actor="key_web", lines={"L1": 1})
    world.actions.ready(order.id, shipment.id, actor="key_store")
    world.gateway.script("void", "transient")
    collected = world.actions.deliver_or_collect(order.id, shipment.id, actor="key_store")
    assert collected.payment.captured < collected.payment.authorized

    world.gateway.script("void", "approve")
    again = world.actions.deliver_or_collect(order.id, shipment.id, actor="key_store")

    assert world.spy.voided == [order.payment.authorization]
    assert again.payment.authorized == again.payment.captured == again.totals.grand_total


def test_the_execution_an_edit_starts_sources_the_order_while_plain_reads_still_show_it_allocated(world, monkeypatch):
    # The outbox starts the edited order's execution from the edit's stream record; a plain read
    # (GetItem is eventually consistent) may still show the order allocated, as it was. Taking that
    # for "done already" ended the execution OrderAllocated with the order `authorized`, nothing
    # sourced and no shipment, until the reconciler's restart a quarter of an hour later.
    order = world.allocated(("TSHIRT", 2))
    world.actions.edit(order.id, order.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=4)]), actor="key_web")
    real_get = world.orders.get
    monkeypatch.setattr(world.orders, "get", lambda oid, consistent=False: real_get(oid) if consistent else order)

    world.workflow.reserve_stock(order.id)
    world.workflow.create_shipments(order.id)

    monkeypatch.undo()
    again = world.order(order.id)
    assert again.status is S.ALLOCATED and [(s.lines[0].quantity) for s in again.shipments] == [4]
    assert world.held_for(order.id) == {("TSHIRT", "wh-west", f"{order.id}#L2"): 4}


@pytest.mark.parametrize(
    ("rejected", "refused"),
    [("wh-west", InvalidTransition), ("shp_nosuchparcel", NotFound)],
    ids=["the parcel that shipped (409)", "a parcel the order never had (404)"],
)  # fmt: skip
def test_a_refused_reject_leaves_a_parcels_ship_in_flight_alone(world, monkeypatch, rejected, refused):
    # The east parcel's ship asked the gateway for its capture and has not recorded it yet (its
    # process died, or it is a moment from its write): a reject refused anyway must not take that
    # capture back, refund it, and make the warehouse's ship fail.
    order = world.allocated(("MUG", 1), ("PEN", 1))
    west, east = world.shipment_at(order, "wh-west"), world.shipment_at(order, "wh-east")
    world.actions.ship(order.id, west, None, actor="key_wh")
    ships_died(world, monkeypatch, order.id, [east])
    before = world.order(order.id)
    parcel = world.shipment_at(order, rejected) if rejected.startswith("wh-") else rejected

    with pytest.raises(refused):
        world.actions.reject(order.id, parcel, "damaged stock", actor="key_store")

    assert world.order(order.id) == before and world.spy.refunded == []
    shipped = world.actions.ship(order.id, east, None, actor="key_wh")
    assert (shipped.status, shipped.payment.captured) == (S.SHIPPED, shipped.totals.grand_total)
    assert world.spy.refunded == []


def test_a_reject_of_another_parcel_of_a_partly_shipped_order_leaves_a_parcels_ship_in_flight_alone(world, monkeypatch):
    # Only the rejected parcel is sourced again on a partly shipped order: the capture the east
    # parcel's ship asked for (and has not recorded yet) is that ship's, not the reject's to refund.
    world.catalog.put_product(product("CAP", "7.77"))
    world.catalog.put_location(location("wh-north", name="North warehouse", latitude=47.61, longitude=-122.33))
    world.inventory.set_on_hand("CAP", "wh-north", 5, reason="count")
    world.inventory.set_on_hand("CAP", "wh-west", 0, reason="count")
    order = world.allocated(("MUG", 1), ("PEN", 1), ("CAP", 1))
    west, east = world.shipment_at(order, "wh-west"), world.shipment_at(order, "wh-east")
    north = world.shipment_at(order, "wh-north")
    world.actions.ship(order.id, west, None, actor="key_wh")
    ships_died(world, monkeypatch, order.id, [east])

    rejected = world.actions.reject(order.id, north, "damaged stock", actor="key_store")

    assert rejected.status is S.PARTIALLY_SHIPPED and world.spy.refunded == []
    assert sorted(s.id for s in rejected.shipments) == sorted([west, east])  # nowhere else has a CAP
    assert rejected.capture_request(east) is not None
    shipped = world.actions.ship(order.id, east, None, actor="key_wh")
    assert (shipped.status, shipped.payment.captured) == (S.SHIPPED, shipped.totals.grand_total)
    assert world.spy.refunded == []


def test_two_rejects_of_a_partly_shipped_orders_parcel_at_once_source_it_again_once(world, monkeypatch):
    # The location's retry lands between the first reject's sourcing and its write: both reserved
    # under the same keys at the same location, and both booked under the same version's key.
    world.inventory.set_on_hand("MUG", "wh-west", 0, reason="count")
    world.catalog.put_location(location("wh-north", name="North warehouse", latitude=47.61, longitude=-122.33))
    world.inventory.set_on_hand("MUG", "wh-north", 3, reason="count")
    order = world.allocated(("MUG", 1), ("PEN", 1))  # north: MUG, east: PEN
    world.inventory.set_on_hand("PEN", "wh-west", 5, reason="count")  # where the rejected PEN can go
    east, north = world.shipment_at(order, "wh-east"), world.shipment_at(order, "wh-north")
    world.actions.ship(order.id, north, None, actor="key_wh")
    twin: list[Order] = []
    before_the_next_write(
        world, monkeypatch, lambda: twin.append(world.actions.reject(order.id, east, "no staff", actor="key_store"))
    )

    first = world.actions.reject(order.id, east, "no staff", actor="key_store")

    monkeypatch.undo()
    assert twin and first.version == twin[0].version
    assert [s.location_id for s in first.shipments if s.status is ShipmentStatus.PENDING] == ["wh-west"]
    assert world.held_for(order.id) == {("PEN", "wh-west", f"{order.id}#L2"): 1}
    assert [e.type for e in world.history(order.id)].count(OrderEvent.SHIPMENT_REJECTED) == 1
    shipped = world.actions.ship(order.id, world.shipment_at(first, "wh-west"), None, actor="key_wh")
    assert (shipped.status, shipped.payment.captured) == (S.SHIPPED, shipped.totals.grand_total)
    assert world.level("PEN", "wh-west") == (4, 0, 4) and world.level("PEN", "wh-east") == (20, 0, 20)


def test_a_reject_of_the_parcel_being_shipped_on_a_partly_shipped_order_refunds_its_capture_first(world, monkeypatch):
    order = world.allocated(("MUG", 1), ("PEN", 1))
    west, east = world.shipment_at(order, "wh-west"), world.shipment_at(order, "wh-east")
    world.actions.ship(order.id, west, None, actor="key_wh")
    ships_died(world, monkeypatch, order.id, [east])
    captured_for_east = world.order(order.id).capture_request(east)
    assert captured_for_east is not None

    rejected = world.actions.reject(order.id, east, "damaged stock", actor="key_store")

    # No other location has a PEN: cancelled out_of_stock, the order shipped and paid for the MUG.
    assert rejected.status is S.SHIPPED and not rejected.captures_requested
    assert world.spy.refunded and rejected.payment.captured - rejected.payment.refunded == rejected.totals.grand_total
    with pytest.raises(InvalidTransition, match="withdrawn"):  # the parcel left the order (409, not 404)
        world.actions.ship(order.id, east, None, actor="key_wh")


@pytest.mark.parametrize("late", ["repeated", "withdrawn"])
def test_a_reject_of_a_parcel_no_longer_on_the_order_leaves_a_parcels_ship_in_flight_alone(world, monkeypatch, late):
    # The west parcel left the order (the west rejected it, or an edit withdrew it before the west
    # heard of it) and the order ships from the east alone. A reject of the west parcel arriving
    # now (the west's retry, or its late reject) changes no parcel: it must not take back the
    # capture the east's ship asked for, refund it, and make the warehouse's ship fail.
    order = world.allocated(("TSHIRT", 1), ("PEN", 1))  # west: TSHIRT, east: PEN
    west = world.shipment_at(order, "wh-west")
    if late == "repeated":
        world.actions.reject(order.id, west, "damaged stock", actor="key_wh_west")
    else:
        edit = OrderEdit(lines=[LineInput(sku="PEN", quantity=1)])
        world.actions.edit(order.id, order.version, edit, actor="key_web")
    again = resume(world, order.id)
    (east,) = [s.id for s in again.shipments]
    assert world.shipment_at(again, "wh-east") == east
    dies_before_recording(world, monkeypatch, "shipment_shipped")
    with pytest.raises(Died):
        world.actions.ship(order.id, east, None, actor="key_wh_east")
    monkeypatch.undo()

    rejected = world.actions.reject(order.id, west, "damaged stock", actor="key_wh_west")

    assert "wh-west" in rejected.excluded_locations and rejected.capture_request(east) is not None
    assert world.spy.refunded == []
    shipped = world.actions.ship(order.id, east, None, actor="key_wh_east")
    assert (shipped.status, shipped.payment.captured) == (S.SHIPPED, shipped.totals.grand_total)
    assert world.spy.refunded == []


def west_shipped_while_the_easts_ship_waits(
    world: World, monkeypatch: pytest.MonkeyPatch, *lines: tuple[str, int]
) -> tuple[Order, str, str]:
    """An order of `lines` over wh-west and wh-east whose east parcel's ship died before recording its
    capture (its request still in flight), then whose west parcel shipped a moment ago, plain reads
    lagging behind that write until monkeypatch.undo(): the order as placed, the west and east parcels."""
    from tests.unit.test_confirmations import lagging_reads

    order = world.allocated(*lines)
    west, east = world.shipment_at(order, "wh-west"), world.shipment_at(order, "wh-east")
    ships_died(world, monkeypatch, order.id, [east])
    lagging_reads(world, monkeypatch)
    world.actions.ship(order.id, west, None, actor="key_wh")
    return order, west, east


def test_a_reject_of_a_parcel_that_shipped_a_moment_ago_leaves_a_parcels_ship_in_flight_alone(world, monkeypatch):
    # The west parcel shipped a moment ago while the east's ship waits to record its capture; a plain
    # read may still show the west parcel pending. The west's reject is refused (409) all the same,
    # decided on the order as written: it must not first take back the east's capture.
    order, west, east = west_shipped_while_the_easts_ship_waits(world, monkeypatch, ("MUG", 1), ("PEN", 1))

    with pytest.raises(InvalidTransition):
        world.actions.reject(order.id, west, "damaged stock", actor="key_store")

    assert world.spy.refunded == []
    monkeypatch.undo()
    shipped = world.actions.ship(order.id, east, None, actor="key_wh")
    assert (shipped.status, shipped.payment.captured) == (S.SHIPPED, shipped.totals.grand_total)
    assert world.spy.refunded == []


def test_a_pickup_the_store_has_not_made_ready_is_not_collected_and_nothing_is_captured_for_it(world):
    # The store hands over only what it picked and put out: the ready step is what tells the customer
    # to come, and what starts the wait the expiry counts.
    order = world.allocated(("TSHIRT", 2), **PICKUP)
    (shipment,) = order.shipments

    with pytest.raises(InvalidTransition, match="not ready_for_pickup"):
        world.actions.collect(order.id, shipment.id, actor="key_store")

    assert world.order(order.id) == order
    assert (world.spy.captured, world.spy.refunded) == ([], [])
    assert world.level("TSHIRT", "store-sf") == (5, 2, 3)


def test_readying_a_collected_pickup_again_answers_the_order_as_it_stands(world):
    # A store's wave sent again after the customer came (API.md: "collected since or not").
    order = world.allocated(("TSHIRT", 2), **PICKUP)
    (shipment,) = order.shipments
    world.actions.ready(order.id, shipment.id, actor="key_store")
    collected = world.actions.collect(order.id, shipment.id, actor="key_store")

    assert world.actions.ready(order.id, shipment.id, actor="key_store") == collected
    assert world.order(order.id) == collected
