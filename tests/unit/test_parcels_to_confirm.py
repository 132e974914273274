"""An order held for a person to confirm whether a parcel left (its ship died after the gateway
captured, core/capture_sweep.py): until a person releases the hold (the parcel confirmed) or cancels
the order, nothing puts that parcel's units back on sale or changes its shipment. An edit or a
reject (which send every parcel back to be sourced) and a cancel of units that would have to take
them from it are refused, 409 `parcel_not_confirmed`, naming the shipment; the stock stays
reserved, the hold and its count as they were."""

from __future__ import annotations

import pytest

from core.errors import InvalidTransition, ParcelNotConfirmed
from core.holds import HoldRequest, Holds, ReleaseRequest
from core.models import LineInput, Money, Order, OrderEdit
from core.status import OrderStatus, ShipmentStatus
from plugins.testing.memory import InMemoryLateOrders
from tests.unit.test_capture_sweep import (
    LATE,
    STOCK,  # noqa: F401 (the stock of the `world` fixture)
    a_pass,
)
from tests.unit.world import Clock, World, a_ship_that_died


def held_for_a_parcel(
    world: World, clock: Clock, monkeypatch: pytest.MonkeyPatch, *lines: tuple[str, int], persons: bool = False
) -> tuple[Order, str]:
    """An order whose first parcel's ship died after its capture, held by the scan's pass for a
    person to confirm whether it left (`persons`: a person held it first, their hold made a park)."""
    order, shipment_id = a_ship_that_died(world, monkeypatch, *lines)
    if persons:
        Holds(world.orders, clock).hold(order.id, HoldRequest(reason="address_review"), "key_ops")
        clock.advance(hours=24, minutes=16)
    else:
        clock.advance(**LATE)
    assert a_pass(world, clock).held == [order.id]
    held = world.order(order.id)
    assert [*held.hold.confirms_ships, *held.hold.ships_to_confirm] == [shipment_id]
    return held, shipment_id


def unchanged(world: World, before: Order) -> None:
    after = world.order(before.id)
    assert (after.version, after.status, after.hold, after.shipments, after.allocations) == (
        before.version, before.status, before.hold, before.shipments, before.allocations,
    )  # fmt: skip
    assert InMemoryLateOrders(world.orders).count_ships_to_confirm() == 1


def refused(call, shipment_id: str) -> ParcelNotConfirmed:
    with pytest.raises(ParcelNotConfirmed) as raised:
        call()
    assert raised.value.code == "parcel_not_confirmed"
    assert [detail["shipment_id"] for detail in raised.value.details] == [shipment_id]
    return raised.value


@pytest.mark.parametrize("persons", [False, True], ids=["system_hold", "persons_hold_made_a_park"])
def test_an_edit_of_an_order_waiting_to_confirm_a_parcel_is_refused_until_a_person_releases_it(
    world, clock, monkeypatch, persons
):
    # An edit sends the order back to be sourced: its units released and reserved anew on the
    # release, the parcel withdrawn while it may be in the van, and the hold's note naming a
    # shipment the order no longer has.
    held, shipment_id = held_for_a_parcel(world, clock, monkeypatch, persons=persons)
    edit = OrderEdit(lines=[LineInput(sku="MUG", quantity=1)])

    refused(lambda: world.actions.edit(held.id, held.version, edit, actor="key_web"), shipment_id)

    unchanged(world, held)
    assert world.level("TSHIRT", "wh-west") == (10, 2, 8)
    holds = Holds(world.orders, clock)
    released = holds.release(held.id, ReleaseRequest(note="it never left"), "key_ops")
    if persons:  # their release ends their hold; the next one confirms the parcel
        released = holds.release(held.id, ReleaseRequest(note="the parcel never left"), "key_ops")
    assert released.status is OrderStatus.ALLOCATED
    edited = world.actions.edit(held.id, released.version, edit, actor="key_web")
    assert edited.status is OrderStatus.AUTHORIZED  # sourced again, as any edit of an allocated order


def test_a_cancel_of_the_units_of_a_parcel_to_confirm_is_refused_and_its_stock_stays_reserved(
    world, clock, monkeypatch
):
    # Cancelled, the parcel's units went back on sale (reserved released) while they may be in the
    # carrier's van, and the hold's note still told a person to ship the cancelled shipment.
    held, shipment_id = held_for_a_parcel(world, clock, monkeypatch, ("TSHIRT", 2), ("CAP", 1))
    named = held.shipment(shipment_id).lines[0]

    refused(
        lambda: world.actions.cancel(held.id, "one item fewer", actor="key_web", lines={named.line_id: 1}),
        shipment_id,
    )

    unchanged(world, held)
    assert (world.level("TSHIRT", "wh-west"), world.level("CAP", "wh-east")) == ((10, 2, 8), (4, 1, 3))
    assert len(world.spy.refunded) == 1  # nothing asked of the gateway since the pass


def test_a_cancel_of_the_units_of_another_parcel_goes_ahead_and_leaves_the_parcel_to_confirm_as_it_was(
    world, clock, monkeypatch
):
    held, shipment_id = held_for_a_parcel(world, clock, monkeypatch, ("TSHIRT", 2), ("CAP", 1))
    other = next(s for s in held.shipments if s.id != shipment_id)
    (line,) = other.lines
    sku = {each.line_id: each.sku for each in held.lines}
    named_sku = sku[held.shipment(shipment_id).lines[0].line_id]
    named_level = world.level(named_sku, held.shipment(shipment_id).location_id)
    on_hand = world.level(sku[line.line_id], other.location_id)[0]

    cancelled = world.actions.cancel(held.id, "one item fewer", actor="key_web", lines={line.line_id: line.quantity})

    assert cancelled.shipment(other.id).status is ShipmentStatus.CANCELLED
    assert cancelled.shipment(shipment_id) == held.shipment(shipment_id)
    assert (cancelled.status, cancelled.hold.confirms_ships) == (OrderStatus.ON_HOLD, [shipment_id])
    # The other parcel's units back on sale; the parcel to confirm's still reserved.
    assert world.level(sku[line.line_id], other.location_id) == (on_hand, 0, on_hand)
    assert world.level(named_sku, held.shipment(shipment_id).location_id) == named_level
    assert InMemoryLateOrders(world.orders).count_ships_to_confirm() == 1


@pytest.mark.parametrize("which", ["named", "other"])
def test_a_reject_of_any_parcel_of_an_order_waiting_to_confirm_a_parcel_is_refused(world, clock, monkeypatch, which):
    # A reject sends the whole order back to be sourced: every parcel withdrawn, the one to
    # confirm included, and on the release its units planned again as if it had never left.
    held, shipment_id = held_for_a_parcel(world, clock, monkeypatch, ("TSHIRT", 2), ("CAP", 1))
    target = shipment_id if which == "named" else next(s.id for s in held.shipments if s.id != shipment_id)

    refused(lambda: world.actions.reject(held.id, target, "no staff", actor="key_wh"), shipment_id)

    unchanged(world, held)
    assert (world.level("TSHIRT", "wh-west"), world.level("CAP", "wh-east")) == ((10, 2, 8), (4, 1, 3))


def test_a_cancel_of_the_order_waiting_to_confirm_a_parcel_ends_it_as_a_persons_answer(world, clock, monkeypatch):
    # The runbook's other way out: a person who found the parcel never left cancels the order.
    held, _ = held_for_a_parcel(world, clock, monkeypatch)

    cancelled = world.actions.cancel(held.id, "the parcel never left", actor="key_ops")

    assert (cancelled.status, cancelled.hold) == (OrderStatus.CANCELLED, None)
    assert world.level("TSHIRT", "wh-west") == (10, 0, 10)
    assert InMemoryLateOrders(world.orders).count_ships_to_confirm() == 0


def persons_hold_on_a_ship_that_died(world: World, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> tuple[Order, str]:
    """A person held the order after its first parcel's ship died with its capture asked (the
    request still stands: the scan refunds it, and makes the hold a park, only once the order is
    late on hold). Whether that parcel left is as unknown as once the scan held it."""
    order, shipment_id = a_ship_that_died(world, monkeypatch, ("TSHIRT", 2), ("CAP", 1))
    Holds(world.orders, clock).hold(order.id, HoldRequest(reason="address_review"), "key_ops")
    held = world.order(order.id)
    assert held.unfinished_ships() == [shipment_id] and not held.hold.parked
    assert InMemoryLateOrders(world.orders).count_ships_to_confirm() == 1
    return held, shipment_id


def unchanged_with_its_request(world: World, before: Order) -> None:
    after = world.order(before.id)
    assert (after.version, after.status, after.hold, after.shipments, after.allocations) == (
        before.version, before.status, before.hold, before.shipments, before.allocations,
    )  # fmt: skip
    assert after.captures_requested == before.captures_requested
    assert world.spy.refunded == []  # the gateway not asked: the capture waits for the scan or a person
    assert InMemoryLateOrders(world.orders).count_ships_to_confirm() == 1
    assert (world.level("TSHIRT", "wh-west"), world.level("CAP", "wh-east")) == ((10, 2, 8), (4, 1, 3))


@pytest.mark.parametrize("which", ["named", "other"])
def test_a_cancel_of_units_on_a_persons_hold_whose_ship_died_after_its_capture_is_refused(
    world, clock, monkeypatch, which
):
    # The cancel settled the capture first (refunded, the request gone: the order no longer counted
    # for ShipsToConfirmAlarm, its hold one the expiry cancels) and then took the units, from the
    # parcel that may be in the carrier's van too: back on sale.
    held, shipment_id = persons_hold_on_a_ship_that_died(world, clock, monkeypatch)
    target = held.shipment(shipment_id) if which == "named" else next(s for s in held.shipments if s.id != shipment_id)
    (line,) = target.lines

    refused(
        lambda: world.actions.cancel(held.id, "one item fewer", actor="key_web", lines={line.line_id: 1}),
        shipment_id,
    )

    unchanged_with_its_request(world, held)


@pytest.mark.parametrize("which", ["named", "other"])
def test_a_reject_on_a_persons_hold_whose_ship_died_after_its_capture_is_refused(world, clock, monkeypatch, which):
    # The reject refunded the capture and sent every parcel back to be sourced, releasing the
    # units of the one that may have left.
    held, shipment_id = persons_hold_on_a_ship_that_died(world, clock, monkeypatch)
    target = shipment_id if which == "named" else next(s.id for s in held.shipments if s.id != shipment_id)

    refused(lambda: world.actions.reject(held.id, target, "no staff", actor="key_wh"), shipment_id)

    unchanged_with_its_request(world, held)


def test_an_edit_on_a_persons_hold_whose_ship_died_after_its_capture_names_the_parcel(world, clock, monkeypatch):
    held, shipment_id = persons_hold_on_a_ship_that_died(world, clock, monkeypatch)
    edit = OrderEdit(lines=[LineInput(sku="MUG", quantity=1)])

    refused(lambda: world.actions.edit(held.id, held.version, edit, actor="key_web"), shipment_id)

    unchanged_with_its_request(world, held)


def test_a_cancel_of_the_order_by_a_caller_that_may_not_release_its_hold_is_refused(world, clock, monkeypatch):
    # A storefront's cancel (orders:write alone) is no answer to whether the parcel left.
    held, shipment_id = held_for_a_parcel(world, clock, monkeypatch)

    refused(
        lambda: world.actions.cancel(held.id, "changed my mind", actor="key_web", confirms_parcels=False),
        shipment_id,
    )

    unchanged(world, held)
    assert world.level("TSHIRT", "wh-west") == (10, 2, 8)


def test_a_persons_release_of_their_hold_while_a_ship_that_died_still_stands_leaves_the_parcel_to_confirm(
    world, clock, monkeypatch
):
    # Released before the scan made their hold a park, the order went back to allocated with the
    # dead ship's capture request standing and nothing to say its parcel may have left: a reject or
    # a cancel of units then refunded the capture and put the parcel's units back on sale, and the
    # order left ShipsToConfirmAlarm's count. A held order never ships, so that ship died: the
    # person's release ends their hold (which named no parcel) and the order stays on the system's
    # hold for the parcel, as a release of their hold made a park leaves it.
    held, shipment_id = persons_hold_on_a_ship_that_died(world, clock, monkeypatch)
    holds = Holds(world.orders, clock)

    released = holds.release(held.id, ReleaseRequest(note="address checked"), "key_ops")

    assert released.status is OrderStatus.ON_HOLD
    assert (released.hold.parked, released.hold.confirms_ships) == (True, [shipment_id])
    assert released.hold.since == clock.now and released.hold.resume_to is OrderStatus.ALLOCATED
    assert released.parcels_to_confirm() == [shipment_id]
    assert released.hold_expiry_counts_from is None
    assert InMemoryLateOrders(world.orders).count_ships_to_confirm() == 1
    # The same release sent again (its answer lost) is a retry and confirms no parcel.
    assert holds.release(held.id, ReleaseRequest(note="address checked"), "key_ops") == released
    other = next(s for s in held.shipments if s.id != shipment_id)
    refused(lambda: world.actions.reject(held.id, other.id, "no staff", actor="key_wh"), shipment_id)
    refused(
        lambda: world.actions.cancel(held.id, "one fewer", actor="key_web", lines={other.lines[0].line_id: 1}),
        shipment_id,
    )
    unchanged_with_its_request(world, released)

    # The scan refunds the capture in time, the order still held; a person's release confirms the parcel.
    clock.advance(hours=24, minutes=16)
    a_pass(world, clock)
    swept = world.order(held.id)
    assert (swept.status, swept.captures_requested, len(world.spy.refunded)) == (OrderStatus.ON_HOLD, [], 1)
    assert InMemoryLateOrders(world.orders).count_ships_to_confirm() == 1
    confirmed = holds.release(held.id, ReleaseRequest(note="the parcel never left"), "key_ops")
    assert (confirmed.status, confirmed.hold) == (OrderStatus.ALLOCATED, None)
    assert InMemoryLateOrders(world.orders).count_ships_to_confirm() == 0


def test_a_carriers_delivery_report_of_a_parcel_to_confirm_ships_and_delivers_it_and_ends_the_hold(
    world, clock, monkeypatch
):
    # The carrier's report that the parcel arrived answers the hold's one question: it left. It was
    # 409 (the shipment still `pending`), the order held until a person released it and shipped it
    # again. Now the report ends the system's hold, ships the parcel as a ship would (captured anew:
    # the scan refunded the dead ship's capture) and records it delivered; sent again, nothing more.
    held, shipment_id = held_for_a_parcel(world, clock, monkeypatch)
    total = held.totals.grand_total

    delivered = world.actions.deliver(held.id, shipment_id, actor="key_carrier")

    assert (delivered.status, delivered.hold) == (OrderStatus.DELIVERED, None)
    assert delivered.shipment(shipment_id).status is ShipmentStatus.DELIVERED
    # Captured once on the order; the dead ship's capture (never recorded) was refunded by the scan.
    assert (delivered.payment.captured, delivered.payment.refunded) == (total, Money.zero(total.currency))
    assert len(world.spy.refunded) == 1
    assert world.level("TSHIRT", "wh-west") == (8, 0, 8)  # the units left on_hand
    assert InMemoryLateOrders(world.orders).count_ships_to_confirm() == 0
    history = [entry.type.value for entry in world.orders.history(held.id)[1]]
    # Released by the report, then shipped as a ship after the scan's refund is (on an authorization
    # renewed: the refunded capture spent the first), then delivered.
    assert history[history.index("payment_capture_reversed") + 1 :] == [
        "released", "payment_authorized", "payment_voided", "shipment_shipped", "shipment_delivered",
    ]  # fmt: skip
    released = world.orders.history(held.id)[1][-5]
    assert released.actor == "key_carrier" and "delivered" in released.detail["note"]

    again = world.actions.deliver(held.id, shipment_id, actor="key_carrier")
    assert again.version == delivered.version and world.level("TSHIRT", "wh-west") == (8, 0, 8)


def test_a_delivery_report_of_a_parcel_whose_dead_ship_still_holds_its_capture_records_that_capture(
    world, clock, monkeypatch
):
    # Before the scan reached it, the order is allocated with the dead ship's capture request standing:
    # the report ships it under that request (the gateway answers the capture it made, under its key).
    order, shipment_id = a_ship_that_died(world, monkeypatch)
    total = order.totals.grand_total

    delivered = world.actions.deliver(order.id, shipment_id, actor="key_carrier")

    assert delivered.status is OrderStatus.DELIVERED and delivered.captures_requested == []
    assert (delivered.payment.captured, delivered.payment.refunded, world.spy.refunded) == (
        total, Money.zero(total.currency), [],
    )  # fmt: skip
    assert world.level("TSHIRT", "wh-west") == (8, 0, 8)


def test_a_delivery_report_does_not_end_a_persons_hold(world, clock, monkeypatch):
    # A person's reason (address_review, fraud_review) is no question the carrier answers: 409 as
    # before, nothing written, until they release it (and then the report settles the parcel).
    held, shipment_id = held_for_a_parcel(world, clock, monkeypatch, persons=True)

    with pytest.raises(InvalidTransition):
        world.actions.deliver(held.id, shipment_id, actor="key_carrier")

    unchanged(world, held)
    Holds(world.orders, clock).release(held.id, ReleaseRequest(note="address checked"), "key_ops")
    delivered = world.actions.deliver(held.id, shipment_id, actor="key_carrier")
    assert (delivered.status, delivered.hold) == (OrderStatus.DELIVERED, None)


def test_a_delivery_report_of_a_pending_parcel_nobody_shipped_stays_refused(world, clock, monkeypatch):
    order = world.allocated(("TSHIRT", 2))

    with pytest.raises(InvalidTransition):
        world.actions.deliver(order.id, order.shipments[0].id, actor="key_carrier")

    assert world.order(order.id).version == order.version


def test_a_delivery_report_sent_again_after_its_function_died_between_the_release_and_the_ship_ships_it(
    world, clock, monkeypatch
):
    # The release is written first: the order allocated, the parcel still pending, no capture
    # request left (the scan refunded it). The carrier's retry finds the release its report made.
    held, shipment_id = held_for_a_parcel(world, clock, monkeypatch)

    class Died(Exception):
        pass

    def dies(*args, **kwargs):
        raise Died

    with monkeypatch.context() as patched:
        patched.setattr(world.actions, "ship", dies)
        with pytest.raises(Died):
            world.actions.deliver(held.id, shipment_id, actor="key_carrier")
    between = world.order(held.id)
    assert (between.status, between.captures_requested) == (OrderStatus.ALLOCATED, [])

    delivered = world.actions.deliver(held.id, shipment_id, actor="key_carrier")

    assert delivered.status is OrderStatus.DELIVERED
    assert world.level("TSHIRT", "wh-west") == (8, 0, 8)
