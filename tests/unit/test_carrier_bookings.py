"""Carrier bookings no parcel will use are cancelled with their carrier, and what a carrier is still
owed (a new label, a cancel) is finished by the reconciler's pass when nobody touches the order."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from core import hookimpl
from core.carrier_bookings import CarrierWorkSweep
from core.errors import OrderClosed, OrderHeld, TransientError
from core.holds import HoldRequest, Holds, ReleaseRequest
from core.ids import booking_key, shipment_id_for
from core.models import LineInput, Order, OrderEdit
from core.ports import OrdersOwingCarrier
from core.status import OrderStatus
from plugins import flat_rate_carrier
from tests.unit.world import Clock, World, before_the_next_write, build_world

S = OrderStatus
# MUG is only in the west and CAP only in the east, so an order with both ships in two parcels.
STOCK = [("MUG", "wh-west", 10), ("CAP", "wh-east", 10)]
ACTOR = "reconciler"


class Carrier:
    """A carrier plugin whose bookings cost money: it books (under the booking key) and cancels,
    recording each cancel it is asked for; while `down`, both fail."""

    NAME = "Acme Parcels"

    def __init__(self) -> None:
        self.down = False
        self.fails: set[str] = set()  # booking keys it cannot book (the carrier down for them)
        self.refuses = False
        self.cancelled: list[tuple[str, str, str]] = []  # (tracking number, booking key, order id)
        self.cancels_asked = 0
        self.booked: dict[str, str] = {}  # tracking number by booking key
        self.times_out = False  # books, then its answer is lost (a read timeout)
        self.times_out_for: set[str] = set()  # booking keys it does that for

    @hookimpl(tryfirst=True)
    def oms_carrier_create_shipment(self, booking_key):
        if self.down or booking_key in self.fails:
            raise ConnectionError("carrier API unreachable")
        self.booked[booking_key] = f"ACME-{booking_key}"
        if self.times_out or booking_key in self.times_out_for:
            raise TimeoutError("the carrier's answer never came")
        return flat_rate_carrier.CarrierShipment(
            carrier=self.NAME, service="Ground", tracking_number=f"ACME-{booking_key}", label=b"%PDF-1.4 label"
        )

    @hookimpl
    def oms_carrier_cancel_shipment(self, carrier, tracking_number, booking_key, order_id):
        if carrier is None and booking_key in self.booked:  # maybe made: it was, by this carrier
            carrier, tracking_number = self.NAME, self.booked[booking_key]
        if carrier != self.NAME:
            return None
        self.cancels_asked += 1
        if self.down:
            raise ConnectionError("carrier API unreachable")
        if self.refuses:
            return False
        self.cancelled.append((tracking_number, booking_key, order_id))
        return True


class InMemoryOrdersOwingCarrier(OrdersOwingCarrier):
    def __init__(self, world: World) -> None:
        self._world = world

    def owing_since_before(self, before: datetime) -> Iterator[str]:
        owing = [o for o in self._world.orders.orders.values() if o.owes_carrier_work() and o.updated_at < before]
        return iter(o.id for o in sorted(owing, key=lambda o: o.updated_at))


@pytest.fixture
def carrier() -> Carrier:
    return Carrier()


@pytest.fixture
def world(carrier: Carrier, clock: Clock) -> World:
    return build_world(STOCK, carrier, clock=clock)


def sweep(world: World, clock: Clock) -> CarrierWorkSweep:
    return CarrierWorkSweep(
        InMemoryOrdersOwingCarrier(world), world.orders, world.actions, clock, after=timedelta(minutes=15)
    )


def history_types(world: World, order_id: str) -> list[str]:
    return [entry.type for entry in world.history(order_id)]


def test_cancelling_an_allocated_order_cancels_its_parcels_bookings_with_the_carrier(world, carrier):
    order = world.allocated(("MUG", 1), ("CAP", 1))

    done = world.actions.cancel(order.id, "changed my mind", actor="key_web")

    assert done.status is S.CANCELLED
    assert sorted(carrier.cancelled) == sorted((s.tracking_number, s.id, order.id) for s in order.shipments)
    assert done.bookings_to_cancel == [] and world.order(order.id) == done
    assert history_types(world, order.id).count("carrier_booking_cancelled") == 2


def test_a_parcel_booked_again_after_a_cancel_of_units_has_its_first_booking_cancelled(world, carrier):
    order = world.allocated(("MUG", 3), ("CAP", 1))
    west = world.shipment_at(order, "wh-west")

    done = world.actions.cancel(order.id, "fewer mugs", actor="key_web", lines={"L1": 2})

    new_key = booking_key(west, done.rebookings)
    assert done.shipment(west).tracking_number == f"ACME-{new_key}"
    assert carrier.cancelled == [(f"ACME-{west}", west, order.id)]  # the first booking, not the new one
    assert done.booking_keys == {west: new_key}

    world.actions.cancel(order.id, "no more", actor="key_web")

    east = world.shipment_at(order, "wh-east")
    assert sorted(carrier.cancelled[1:]) == sorted(
        [(f"ACME-{new_key}", new_key, order.id), (f"ACME-{east}", east, order.id)]
    )  # the new booking cancelled under its own key


def test_a_parcel_a_cancel_of_units_empties_has_its_booking_cancelled(world, carrier):
    order = world.allocated(("MUG", 1), ("CAP", 1))
    east = world.shipment_at(order, "wh-east")

    done = world.actions.cancel(order.id, "no cap", actor="key_web", lines={"L2": 1})

    assert [(s.location_id, s.status) for s in done.shipments] == [("wh-east", "cancelled"), ("wh-west", "pending")]
    assert carrier.cancelled == [(f"ACME-{east}", east, order.id)]


def test_an_edit_that_sends_the_order_to_be_sourced_again_cancels_its_bookings_and_keeps_the_new_keys(world, carrier):
    order = world.allocated(("MUG", 1))
    west = world.shipment_at(order, "wh-west")

    edited = world.actions.edit(order.id, order.version, OrderEdit(lines=[LineInput(sku="MUG", quantity=2)]),
                                actor="key_web")  # fmt: skip

    assert edited.status is S.AUTHORIZED
    assert carrier.cancelled == [(f"ACME-{west}", west, order.id)]
    world.workflow.reserve_stock(order.id)
    world.workflow.create_shipments(order.id)
    replaced = world.order(order.id)
    again = booking_key(world.shipment_at(replaced, "wh-west"), replaced.rebookings)
    world.actions.cancel(order.id, "changed my mind", actor="key_web")
    assert carrier.cancelled[1:] == [(f"ACME-{again}", again, order.id)]


def test_a_carrier_down_keeps_the_cancel_and_the_reconcilers_pass_cancels_the_bookings_later(world, carrier, clock):
    order = world.allocated(("MUG", 1), ("CAP", 1))
    carrier.down = True

    done = world.actions.cancel(order.id, "changed my mind", actor="key_web")

    assert done.status is S.CANCELLED and carrier.cancelled == []
    stored = Order.model_validate_json(done.stored_json())
    assert sorted(b.tracking_number for b in stored.bookings_to_cancel) == sorted(
        s.tracking_number for s in order.shipments
    )
    assert "bookings_to_cancel" not in done.model_dump(mode="json")
    assert sweep(world, clock).run(ACTOR) == {}  # still in its request's hands

    clock.advance(minutes=20)
    assert list(sweep(world, clock).run(ACTOR)[order.id].failed)  # still down: still owed
    assert world.order(order.id).owes_carrier_work()
    carrier.down = False
    clock.advance(minutes=5)
    work = sweep(world, clock).run(ACTOR)[order.id]

    assert len(work.settled) == 2 and work.failed == []
    assert len(carrier.cancelled) == 2 and not world.order(order.id).owes_carrier_work()
    assert sweep(world, clock).run(ACTOR) == {}


def test_a_booking_the_carrier_will_not_cancel_is_recorded_and_not_asked_again(world, carrier, clock):
    order = world.allocated(("MUG", 1))
    carrier.refuses = True

    world.actions.cancel(order.id, "changed my mind", actor="key_web")

    (entry,) = [h for h in world.history(order.id) if h.type == "carrier_booking_not_cancelled"]
    assert entry.detail["reason"] == "the carrier will not cancel it"
    assert not world.order(order.id).owes_carrier_work()


def test_a_parcel_whose_new_label_failed_is_booked_again_by_the_reconcilers_pass_untouched(world, carrier, clock):
    # Nobody cancels or ships anything else: the parcel would keep its three-mug label.
    order = world.allocated(("MUG", 3), ("CAP", 1))
    west = world.shipment_at(order, "wh-west")
    carrier.down = True
    done = world.actions.cancel(order.id, "fewer mugs", actor="key_web", lines={"L1": 2})
    assert done.labels_due == [west]
    carrier.down = False
    clock.advance(minutes=20)

    work = sweep(world, clock).run(ACTOR)[order.id]

    after = world.order(order.id)
    key = booking_key(west, after.rebookings)
    assert work.relabelled == [west] and after.labels_due == []
    assert after.shipment(west).tracking_number == f"ACME-{key}"
    assert after.shipment(west).label_url == f"labels/{order.id}/{key}"
    assert carrier.cancelled == [(f"ACME-{west}", west, order.id)]  # and the first booking cancelled
    assert not after.owes_carrier_work()
    assert history_types(world, order.id).count("label_booking_failed") == 1  # the pass adds none


def test_a_new_label_booked_though_its_answer_was_lost_is_cancelled_when_the_parcel_ships_with_its_old_one(
    world, carrier, clock
):
    order = world.allocated(("MUG", 3), ("CAP", 1))
    west = world.shipment_at(order, "wh-west")
    carrier.times_out = True
    done = world.actions.cancel(order.id, "fewer mugs", actor="key_web", lines={"L1": 2})
    assert done.labels_due == [west]
    new_key = booking_key(west, done.rebookings)
    assert new_key in carrier.booked  # booked, and nothing records it
    carrier.times_out = False

    world.actions.ship(order.id, west, None, actor="key_wh")  # before the reconciler's pass: the old label

    clock.advance(minutes=20)
    sweep(world, clock).run(ACTOR)
    assert [key for _, key, _ in carrier.cancelled] == [new_key]  # the old one was used
    assert not world.order(order.id).owes_carrier_work()


def test_a_new_label_booked_though_its_answer_was_lost_is_cancelled_when_another_cancel_books_anew(
    world, carrier, clock
):
    order = world.allocated(("MUG", 3), ("CAP", 1))
    west = world.shipment_at(order, "wh-west")
    carrier.times_out = True
    first = world.actions.cancel(order.id, "fewer mugs", actor="key_web", lines={"L1": 1})
    carrier.times_out = False

    done = world.actions.cancel(order.id, "fewer still", actor="key_web", lines={"L1": 1})

    lost, kept = booking_key(west, first.rebookings), booking_key(west, done.rebookings)
    assert done.shipment(west).tracking_number == f"ACME-{kept}" and done.labels_due == []
    clock.advance(minutes=20)
    sweep(world, clock).run(ACTOR)
    assert sorted(key for _, key, _ in carrier.cancelled) == sorted([west, lost])


def test_a_cancelled_order_is_no_longer_due_a_label(world, carrier, clock):
    order = world.allocated(("MUG", 3))
    carrier.down = True
    world.actions.cancel(order.id, "fewer mugs", actor="key_web", lines={"L1": 2})
    carrier.down = False

    done = world.actions.cancel(order.id, "none at all", actor="key_web")

    assert done.status is S.CANCELLED and done.labels_due == []
    clock.advance(minutes=20)
    assert sweep(world, clock).run(ACTOR) == {}
    assert [key for _, key, _ in carrier.cancelled] == [world.shipment_at(order, "wh-west")]


def test_a_booking_no_plugin_cancels_is_recorded_once_and_not_asked_again(clock):
    world = build_world(STOCK, clock=clock)  # the built-in carrier books: it answers for its own
    order = world.allocated(("MUG", 1))
    stray = order.shipments[0].model_copy(update={"carrier": "Gone Parcels"})
    world.orders.orders[order.id] = order.model_copy(update={"shipments": [stray]})

    world.actions.cancel(order.id, "changed my mind", actor="key_web")

    (entry,) = [h for h in world.history(order.id) if h.type == "carrier_booking_not_cancelled"]
    assert entry.detail["reason"] == "no carrier plugin cancels bookings of Gone Parcels"
    assert not world.order(order.id).owes_carrier_work()


def test_the_built_in_carrier_cancels_its_own_bookings_and_answers_for_no_other():
    assert flat_rate_carrier.oms_carrier_cancel_shipment(carrier=flat_rate_carrier.CARRIER) is True
    assert flat_rate_carrier.oms_carrier_cancel_shipment(carrier="Acme Parcels") is None


# --- Bookings no version recorded -------------------------------------------------------------------


def test_shipments_booked_by_a_step_that_lost_its_write_to_a_cancel_have_their_bookings_cancelled(
    world, carrier, clock, monkeypatch
):
    order_id = world.place(("MUG", 1))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)
    before_the_next_write(world, monkeypatch, lambda: world.actions.cancel(order_id, "too late", actor="key_web"))

    with pytest.raises(OrderClosed):
        world.workflow.create_shipments(order_id)

    monkeypatch.undo()
    west = shipment_id_for(order_id, "wh-west")
    assert [b.booking_key for b in world.order(order_id).bookings_to_cancel] == [west]
    clock.advance(minutes=20)
    sweep(world, clock).run(ACTOR)
    assert carrier.cancelled == [(f"ACME-{west}", west, order_id)]


def test_shipments_booked_by_a_step_that_lost_its_write_to_a_hold_keep_their_bookings_for_the_release(
    world, carrier, monkeypatch
):
    order_id = world.place(("MUG", 1))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)
    holds = Holds(world.orders, clock=lambda: world.order(order_id).updated_at)
    before_the_next_write(
        world, monkeypatch, lambda: holds.hold(order_id, HoldRequest(reason="customer_request"), actor="key_ops")
    )

    with pytest.raises(OrderHeld):
        world.workflow.create_shipments(order_id)

    monkeypatch.undo()
    assert world.order(order_id).bookings_to_cancel == []  # the release books it again under its key
    holds.release(order_id, ReleaseRequest(), actor="key_ops")
    assert world.run(order_id).status is S.ALLOCATED
    assert carrier.cancelled == []


def test_shipments_booked_by_a_step_that_lost_its_write_to_a_hold_are_cancelled_if_the_held_order_is(
    world, carrier, clock, monkeypatch
):
    order_id = world.place(("MUG", 1))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)
    holds = Holds(world.orders, clock=lambda: world.order(order_id).updated_at)
    before_the_next_write(
        world, monkeypatch, lambda: holds.hold(order_id, HoldRequest(reason="customer_request"), actor="key_ops")
    )
    with pytest.raises(OrderHeld):
        world.workflow.create_shipments(order_id)
    monkeypatch.undo()

    world.actions.cancel(order_id, "changed my mind", actor="key_web")

    clock.advance(minutes=20)
    sweep(world, clock).run(ACTOR)
    west = shipment_id_for(order_id, "wh-west")
    assert carrier.cancelled == [(f"ACME-{west}", west, order_id)]


def booked_one_of_two(world: World, carrier: Carrier) -> tuple[str, str]:
    """An order in two parcels whose CreateShipments booked the first (wh-east) and failed on the
    second, as often as Step Functions retried it, then parked: (order id, the first's key)."""
    order_id = world.place(("MUG", 1), ("CAP", 1))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)
    carrier.fails.add(shipment_id_for(order_id, "wh-west"))
    for _ in range(2):
        with pytest.raises(TransientError):
            world.workflow.create_shipments(order_id)
    assert world.workflow.park_after_failure(order_id, "States.TaskFailed", "carrier API unreachable")
    carrier.fails.clear()
    return order_id, shipment_id_for(order_id, "wh-east")


def test_a_booking_made_before_createshipments_failed_is_cancelled_when_the_parked_order_is(world, carrier, clock):
    order_id, east = booked_one_of_two(world, carrier)
    parked = world.order(order_id)
    assert (parked.status, parked.bookings_to_cancel) == (S.ON_HOLD, [])  # a release would book it again

    world.actions.cancel(order_id, "gave up waiting", actor="key_web")

    clock.advance(minutes=20)
    sweep(world, clock).run(ACTOR)
    assert carrier.cancelled == [(f"ACME-{east}", east, order_id)]
    assert world.order(order_id).owes_carrier_work() is False


def test_a_booking_made_before_createshipments_failed_is_cancelled_when_an_edit_of_the_parked_order_books_anew(
    world, carrier, clock
):
    order_id, east = booked_one_of_two(world, carrier)
    edit = OrderEdit(lines=[LineInput(sku="MUG", quantity=1)])
    world.actions.edit(order_id, world.order(order_id).version, edit, actor="key_web")

    assert carrier.cancelled == [(f"ACME-{east}", east, order_id)]  # by the edit's own request
    edited = world.order(order_id)
    assert (edited.unrecorded_bookings, edited.bookings_to_cancel) == ([], [])


def test_a_booking_made_before_createshipments_failed_is_owed_a_cancel_at_once_if_the_order_was_cancelled_meanwhile(
    world, carrier, clock, monkeypatch
):
    order_id = world.place(("MUG", 1), ("CAP", 1))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)
    east, west = shipment_id_for(order_id, "wh-east"), shipment_id_for(order_id, "wh-west")
    carrier.fails.add(west)
    real_book = world.workflow._book

    def book(order, shipment_id, *args):
        if shipment_id == west:  # the customer cancels while the second parcel is being booked
            world.actions.cancel(order_id, "too slow", actor="key_web")
        return real_book(order, shipment_id, *args)

    monkeypatch.setattr(world.workflow, "_book", book)
    with pytest.raises(TransientError):
        world.workflow.create_shipments(order_id)

    # West's booking raised: maybe made (the answer lost), owed a cancel too, which the carrier
    # (that never made it) leaves to the built-in one.
    owed = world.order(order_id).bookings_to_cancel
    assert [(b.booking_key, b.carrier) for b in owed] == [(east, Carrier.NAME), (west, None)]
    clock.advance(minutes=20)
    sweep(world, clock).run(ACTOR)
    assert carrier.cancelled == [(f"ACME-{east}", east, order_id)]
    assert world.order(order_id).owes_carrier_work() is False


def test_a_booking_made_before_createshipments_failed_is_used_once_the_parked_order_is_released(world, carrier):
    order_id, east = booked_one_of_two(world, carrier)
    Holds(world.orders).release(order_id, ReleaseRequest(), actor="key_ops")

    world.workflow.create_shipments(order_id)

    allocated = world.order(order_id)
    assert allocated.status is S.ALLOCATED and allocated.shipment(east).tracking_number == f"ACME-{east}"
    assert (allocated.unrecorded_bookings, allocated.bookings_to_cancel, carrier.cancelled) == ([], [], [])


def test_a_new_label_that_loses_to_another_cancel_of_the_parcel_has_its_booking_cancelled(world, carrier, monkeypatch):
    order = world.allocated(("MUG", 4), ("CAP", 1))
    west = world.shipment_at(order, "wh-west")
    before_the_next_write(  # after the first cancel's write, before its new label's
        world, monkeypatch, lambda: world.actions.cancel(order.id, "one more", actor="key_web", lines={"L1": 1}),
        skip=1,
    )  # fmt: skip

    world.actions.cancel(order.id, "fewer mugs", actor="key_web", lines={"L1": 2})

    first, second = booking_key(west, 1), booking_key(west, 2)
    after = world.order(order.id)
    assert after.shipment(west).tracking_number == f"ACME-{second}" and after.bookings_to_cancel == []
    # The parcel's first booking, and the first cancel's label that came too late, both cancelled
    # (that label once more when its own request learns it lost: the second cancel gave up its key
    # as maybe booked, and settled it, first).
    assert {key for _, key, _ in carrier.cancelled} == {west, first}


def test_only_an_order_owing_a_carrier_work_has_an_entry_in_the_indexs_carrier_partition(world, carrier):
    from functions.adapters.dynamodb import index_attributes

    # The typical order (allocated, shipped, delivered) writes no entry at any step.
    order = world.allocated(("MUG", 1))
    (shipment,) = order.shipments
    shipped = world.actions.ship(order.id, shipment.id, None, actor="key_wh")
    delivered = world.actions.deliver(order.id, shipment.id, actor="key_wh")
    for each in (order, shipped, delivered):
        assert not {"refund_key", "refund_since"} & set(index_attributes(each))

    owing = world.allocated(("MUG", 1))
    carrier.down = True
    cancelled = world.actions.cancel(owing.id, "changed my mind", actor="key_web")
    assert index_attributes(cancelled)["refund_key"] == {"S": "carrier"}
    carrier.down = False
    assert "refund_key" not in index_attributes(world.actions.cancel(owing.id, "again", actor="key_web"))


def test_a_parcel_that_ships_with_its_old_label_is_no_longer_due_one_nor_read_by_every_pass(world, carrier, clock):
    # The warehouse shipped it while the carrier was still down: nothing is left to book, and an
    # order left due would be read by every pass for good, crowding out the ones that owe something.
    order = world.allocated(("MUG", 3))
    west = world.shipment_at(order, "wh-west")
    carrier.down = True
    world.actions.cancel(order.id, "fewer mugs", actor="key_web", lines={"L1": 2})

    shipped = world.actions.ship(order.id, west, None, actor="key_wh")

    assert shipped.status is S.SHIPPED and shipped.labels_due == [] and not shipped.owes_carrier_work()
    clock.advance(minutes=20)
    assert sweep(world, clock).run(ACTOR) == {}


def test_a_carrier_down_is_asked_once_a_pass_and_orders_owing_another_are_not_stuck_behind_it(world, carrier, clock):
    orders = [world.allocated(("MUG", 1)).id for _ in range(4)]
    carrier.down = True
    for order_id in orders:
        world.actions.cancel(order_id, "changed my mind", actor="key_web")
    other = world.order(orders[-1])
    # Its booking was the built-in carrier's, which answers.
    elsewhere = [b.model_copy(update={"carrier": flat_rate_carrier.CARRIER}) for b in other.bookings_to_cancel]
    world.orders.orders[other.id] = other.model_copy(update={"bookings_to_cancel": elsewhere})
    asked_before = carrier.cancels_asked
    clock.advance(minutes=20)

    done = CarrierWorkSweep(
        InMemoryOrdersOwingCarrier(world), world.orders, world.actions, clock, after=timedelta(minutes=15), limit=2
    ).run(ACTOR)

    assert carrier.cancels_asked == asked_before + 1  # once this pass, not once per order
    assert len(done[other.id].settled) == 1 and not world.order(other.id).owes_carrier_work()
    assert len(done) == 2


class Killed(BaseException):
    """The Lambda's runtime ending the invocation (a timeout): no except clause of the step runs."""


def killed_after_booking_one_of_two(world: World, carrier: Carrier, monkeypatch) -> tuple[str, str, str]:
    """An order in two parcels whose CreateShipments booked the first (wh-east) and was killed
    while booking the second, on every attempt, then parked: (order id, east's key, west's key)."""
    order_id = world.place(("MUG", 1), ("CAP", 1))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)
    east, west = shipment_id_for(order_id, "wh-east"), shipment_id_for(order_id, "wh-west")
    real_book = world.workflow._book

    def book(order, shipment_id, *args):
        if shipment_id == west:
            raise Killed("Task timed out after 15.00 seconds")
        return real_book(order, shipment_id, *args)

    with monkeypatch.context() as patched:
        patched.setattr(world.workflow, "_book", book)
        for _ in range(2):
            with pytest.raises(Killed):
                world.workflow.create_shipments(order_id)
    assert world.workflow.park_after_failure(order_id, "States.Timeout", "")
    return order_id, east, west


def test_a_booking_made_before_createshipments_was_killed_is_cancelled_when_the_parked_order_is(
    world, carrier, clock, monkeypatch
):
    order_id, east, west = killed_after_booking_one_of_two(world, carrier, monkeypatch)
    parked = world.order(order_id)
    assert (parked.status, parked.bookings_to_cancel) == (S.ON_HOLD, [])  # a release would book it again

    world.actions.cancel(order_id, "gave up waiting", actor="key_web")
    clock.advance(minutes=20)
    sweep(world, clock).run(ACTOR)

    assert carrier.cancelled == [(f"ACME-{east}", east, order_id)]  # west was never booked: nothing asked of it
    settled = [h.detail for h in world.history(order_id) if h.type == "carrier_booking_cancelled"]
    assert sorted(d["booking_key"] for d in settled) == sorted([east, west])
    assert world.order(order_id).owes_carrier_work() is False


def test_a_booking_made_before_createshipments_was_killed_is_cancelled_when_an_edit_of_the_parked_order_books_anew(
    world, carrier, monkeypatch
):
    order_id, east, _ = killed_after_booking_one_of_two(world, carrier, monkeypatch)
    edit = OrderEdit(lines=[LineInput(sku="MUG", quantity=1)])

    world.actions.edit(order_id, world.order(order_id).version, edit, actor="key_web")

    assert carrier.cancelled == [(f"ACME-{east}", east, order_id)]
    edited = world.order(order_id)
    assert (edited.unrecorded_bookings, edited.bookings_to_cancel) == ([], [])


def test_the_keys_a_killed_createshipments_may_have_booked_under_are_used_by_the_release(world, carrier, monkeypatch):
    order_id, east, west = killed_after_booking_one_of_two(world, carrier, monkeypatch)
    assert {(b.shipment_id, b.carrier) for b in world.order(order_id).unrecorded_bookings} == {
        (east, None),
        (west, None),
    }
    Holds(world.orders).release(order_id, ReleaseRequest(), actor="key_ops")

    world.workflow.create_shipments(order_id)

    allocated = world.order(order_id)
    assert allocated.status is S.ALLOCATED
    assert (allocated.unrecorded_bookings, allocated.bookings_to_cancel, carrier.cancelled) == ([], [], [])


def test_a_booking_whose_answer_createshipments_never_heard_is_cancelled_if_the_order_is_cancelled_before_the_park(
    world, carrier, clock
):
    order_id = world.place(("MUG", 1), ("CAP", 1))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)
    east, west = shipment_id_for(order_id, "wh-east"), shipment_id_for(order_id, "wh-west")
    carrier.times_out_for.add(west)  # the carrier books, and the step hears nothing back
    with pytest.raises(TransientError):
        world.workflow.create_shipments(order_id)

    world.actions.cancel(order_id, "too slow", actor="key_web")  # between two attempts
    with pytest.raises(OrderClosed):
        world.workflow.create_shipments(order_id)

    clock.advance(minutes=20)
    sweep(world, clock).run(ACTOR)
    assert sorted(key for _, key, _ in carrier.cancelled) == sorted([east, west])
    assert world.order(order_id).owes_carrier_work() is False


def test_the_only_parcels_booking_whose_answer_never_came_is_cancelled_when_the_order_is(world, carrier, clock):
    # As above with one parcel: the booking that raised is the only one the step may have made.
    order_id = world.place(("MUG", 1))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)
    west = shipment_id_for(order_id, "wh-west")
    carrier.times_out_for.add(west)
    with pytest.raises(TransientError):
        world.workflow.create_shipments(order_id)

    world.actions.cancel(order_id, "too slow", actor="key_web")

    clock.advance(minutes=20)
    sweep(world, clock).run(ACTOR)
    assert [key for _, key, _ in carrier.cancelled] == [west]
    assert world.order(order_id).owes_carrier_work() is False


def test_a_booking_whose_label_could_not_be_stored_is_cancelled_once_when_the_order_is(
    world, carrier, clock, monkeypatch
):
    # The carrier answered; storing its label failed: the booking is known, with its tracking
    # number, and the cancel asks the carrier once for it, not again as one maybe made.
    order_id = world.place(("MUG", 1))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)

    def put_label(*args, **kwargs):
        raise ConnectionError("the label store is unreachable")

    monkeypatch.setattr(world.labels, "put_label", put_label)
    with pytest.raises(ConnectionError):
        world.workflow.create_shipments(order_id)
    monkeypatch.undo()

    world.actions.cancel(order_id, "too slow", actor="key_web")

    clock.advance(minutes=20)
    sweep(world, clock).run(ACTOR)
    west = shipment_id_for(order_id, "wh-west")
    assert carrier.cancelled == [(f"ACME-{west}", west, order_id)]
    assert carrier.cancels_asked == 1
    assert world.order(order_id).owes_carrier_work() is False


def test_an_order_parked_before_its_stock_was_reserved_keeps_no_booking_maybe_made(world):
    order_id = world.place(("MUG", 1))
    world.workflow.authorize_payment(order_id, attempt=0)

    assert world.workflow.park_after_failure(order_id, "States.Timeout", "")

    assert world.order(order_id).unrecorded_bookings == []


def test_the_built_in_carrier_answers_for_a_booking_maybe_made():
    assert flat_rate_carrier.oms_carrier_cancel_shipment(carrier=None) is True


def test_a_booking_made_before_createshipments_failed_is_cancelled_when_units_of_the_parked_order_are(
    world, carrier, clock
):
    order_id, east = booked_one_of_two(world, carrier)
    mug = next(line.line_id for line in world.order(order_id).lines if line.sku == "MUG")

    world.actions.cancel(order_id, "one is enough", actor="key_web", lines={mug: 1})

    assert carrier.cancelled == [(f"ACME-{east}", east, order_id)]  # by the cancel's own request, as an edit's
    cancelled = world.order(order_id)
    assert (cancelled.status, cancelled.allocations, cancelled.unrecorded_bookings, cancelled.bookings_to_cancel) == (
        S.ON_HOLD, [], [], [])  # fmt: skip


def test_a_carrier_down_is_asked_once_for_the_cancel_of_an_orders_two_parcels_not_once_each(world, carrier, clock):
    order = world.allocated(("MUG", 1), ("CAP", 1))
    carrier.down = True

    world.actions.cancel(order.id, "changed my mind", actor="key_web")

    assert carrier.cancels_asked == 1  # its first cancel failed: the second would wait as long
    assert len(world.order(order.id).bookings_to_cancel) == 2  # both owed, for the reconciler's pass


def test_an_order_owing_a_carrier_found_down_and_another_has_the_others_booking_cancelled_in_the_same_pass(
    world, carrier, clock
):
    first, both = world.allocated(("MUG", 1)).id, world.allocated(("MUG", 1), ("CAP", 1)).id
    carrier.down = True
    for order_id in (first, both):
        world.actions.cancel(order_id, "changed my mind", actor="key_web")
    owed = world.order(both)
    # One of its parcels was booked with the built-in carrier, which answers.
    elsewhere = [owed.bookings_to_cancel[0].model_copy(update={"carrier": flat_rate_carrier.CARRIER}),
                 *owed.bookings_to_cancel[1:]]  # fmt: skip
    world.orders.orders[both] = owed.model_copy(update={"bookings_to_cancel": elsewhere})
    clock.advance(minutes=20)

    done = sweep(world, clock).run(ACTOR)

    assert done[both].settled == elsewhere[:1]  # not left a pass behind the carrier down
    assert [booking.carrier for booking in world.order(both).bookings_to_cancel] == [Carrier.NAME]


def test_a_pass_asks_the_carrier_about_at_most_limit_orders_and_leaves_the_rest_to_the_next(world, carrier, clock):
    orders = [world.allocated(("MUG", 1)).id for _ in range(2)]
    carrier.down = True
    for order_id in orders:
        world.actions.cancel(order_id, "changed my mind", actor="key_web")
    carrier.down = False
    clock.advance(minutes=20)

    done = CarrierWorkSweep(
        InMemoryOrdersOwingCarrier(world), world.orders, world.actions, clock, after=timedelta(minutes=15), limit=1
    ).run(ACTOR)

    assert list(done) == orders[:1]
    assert [world.order(order_id).owes_carrier_work() for order_id in orders] == [False, True]
