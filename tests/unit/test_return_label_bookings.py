"""A return label's booking key (oms_carrier_return_label's `booking_key`): the same for a retried
booking of the same parcel, a new one when what is booked differs. A return's id comes from its
order and ordinal, so a request that failed and is made again with other lines, or a request that
lost the ordinal to a concurrent one, books under the same `return_id` with other contents."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from core import hookimpl
from core.errors import Conflict, TransientError
from core.models import GivenUpBooking
from core.return_models import Return
from core.returns import return_booking_key
from core.workflow_types import CarrierShipment
from tests.builders import NOW
from tests.unit.test_returns import STOCK, ApprovalPolicy, ask, returns_for, shipped
from tests.unit.world import Clock, World, build_world


class KeyedCarrier:
    """A carrier idempotent on the key it is asked under, as the hookspec tells it to be: a key it
    booked before is answered that booking. It records every booking it makes, and can make one
    and lose the answer (a timeout after the carrier made it)."""

    def __init__(self) -> None:
        self.bookings: dict[str, CarrierShipment] = {}
        self.asked: list[tuple[str, str, list[tuple[str, int]], int]] = []
        self.lose_next_answer = False
        self.cancelled: list[str] = []  # the booking keys of the cancels it made, in order
        self.down = False  # a cancel raises
        self.after_booking: Callable[[], None] | None = None  # run once, after its next booking

    @hookimpl(tryfirst=True)
    def oms_carrier_return_label(self, return_id, booking_key, lines, weight_grams) -> CarrierShipment:
        contents = [(line.line_id, line.quantity) for line in lines]
        self.asked.append((return_id, booking_key, contents, weight_grams))
        if booking_key not in self.bookings:
            number = f"ACME{len(self.bookings) + 1}"
            self.bookings[booking_key] = CarrierShipment(
                carrier="Acme", service="Returns", tracking_number=number,
                label=f"%PDF-1.4 {number} {contents} {weight_grams} g".encode(),
            )  # fmt: skip
        if self.after_booking is not None:
            run, self.after_booking = self.after_booking, None
            run()
        if self.lose_next_answer:
            self.lose_next_answer = False
            raise TransientError("the carrier's answer timed out")
        return self.bookings[booking_key]

    @hookimpl(tryfirst=True)
    def oms_carrier_cancel_shipment(self, carrier, tracking_number, booking_key, order_id):
        if carrier is None and booking_key in self.bookings:  # maybe made: it was, by this carrier
            carrier, tracking_number = "Acme", self.bookings[booking_key].tracking_number
        if carrier != "Acme":
            return None
        assert tracking_number == self.bookings[booking_key].tracking_number
        if self.down:
            raise ConnectionError("carrier API unreachable")
        self.cancelled.append(booking_key)
        return True

    def label_of(self, item: Return) -> str:
        """The key of the booking whose label `item` shows."""
        (key,) = [key for key, booked in self.bookings.items() if booked.tracking_number == item.tracking_number]
        return key


@pytest.fixture
def world() -> World:
    return build_world(STOCK)


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW + timedelta(days=3))


def stored_document(world: World, item: Return) -> bytes:
    assert item.label_url is not None
    return world.labels.labels[item.label_url.rsplit("/", 1)[1]]


def test_a_request_made_again_with_other_lines_after_its_booking_failed_gets_a_label_of_its_own_lines(world, clock):
    carrier = KeyedCarrier()
    returns, store = returns_for(world, clock, carrier)
    order = shipped(world, ("TSHIRT", 2), ("MUG", 1))
    carrier.lose_next_answer = True  # the carrier books the two T-shirts; the OMS never hears it
    with pytest.raises(TransientError):
        returns.request(order.id, ask(("L1", 2, None)), actor="key_cs")
    assert store.returns == {}

    item = returns.request(order.id, ask(("L2", 1, None)), actor="key_cs")  # the customer sends the mug instead

    (first_id, first_key, _, _), (second_id, second_key, contents, weight) = carrier.asked
    assert first_id == second_id == item.id  # the same ordinal: the same return id
    assert second_key != first_key and (contents, weight) == ([("L2", 1)], 350)
    assert item.tracking_number == carrier.bookings[second_key].tracking_number == "ACME2"
    assert stored_document(world, item) == b"%PDF-1.4 ACME2 [('L2', 1)] 350 g"


def test_a_request_retried_with_the_same_lines_is_answered_the_booking_the_carrier_made(world, clock):
    carrier = KeyedCarrier()
    returns, _ = returns_for(world, clock, carrier)
    order = shipped(world, ("TSHIRT", 2), ("MUG", 1))
    carrier.lose_next_answer = True
    with pytest.raises(TransientError):
        returns.request(order.id, ask(("L1", 1, None), ("L2", 1, None)), actor="key_cs")

    item = returns.request(order.id, ask(("L2", 1, None), ("L1", 1, None)), actor="key_cs")  # the same parcel

    keys = [key for _, key, _, _ in carrier.asked]
    assert len(keys) == 2 and keys[0] == keys[1] and len(carrier.bookings) == 1  # one label paid for
    assert item.tracking_number == "ACME1"
    assert keys[0].startswith(f"{item.id}-")


def test_a_request_that_lost_its_ordinal_to_a_concurrent_one_leaves_the_winner_its_own_label(world, clock):
    # A and B count the order's returns together and both take ordinal 1: both book under its id,
    # each stores its label, A's return is written first and B counts again and takes ordinal 2.
    # A's return must keep the document of A's parcel, not B's stored after it under the same id.
    carrier = KeyedCarrier()
    returns, store = returns_for(world, clock, carrier)
    order = shipped(world, ("TSHIRT", 2), ("MUG", 1))
    real_add, writes, raced = store.add, [], []

    def add(item: Return) -> None:
        writes.append(item)
        if len(writes) == 1:  # A's write, about to land: B runs in between, from its count to its write
            raced.append(returns.request(order.id, ask(("L2", 1, None)), actor="key_cs"))
            return  # A's write landed inside B's run (below)
        if len(writes) == 2:  # B's first write: A's lands just before it
            real_add(writes[0])
        real_add(item)

    store.add = add  # type: ignore[method-assign]
    a = returns.request(order.id, ask(("L1", 2, None)), actor="key_cs")
    (b,) = raced

    assert (a.ordinal, b.ordinal) == (1, 2) and store.returns[a.id] == a
    assert stored_document(world, a) == b"%PDF-1.4 ACME1 [('L1', 2)] 400 g"
    assert stored_document(world, b).endswith(b"[('L2', 1)] 350 g")


def awaiting_approval(world: World, clock: Clock) -> tuple[KeyedCarrier, Any, Any, Return]:
    """A return of one MUG of a shipped order, requested under a policy that wants approval, whose
    label the approval books with a carrier keyed on the booking key: (carrier, returns, order, return)."""
    carrier = KeyedCarrier()
    returns, _ = returns_for(world, clock, ApprovalPolicy(), carrier)
    order = shipped(world, ("TSHIRT", 2), ("MUG", 1))
    return carrier, returns, order, returns.request(order.id, ask(("L2", 1, None)), actor="key_cs")


def approval_answer_lost(returns: Any, carrier: KeyedCarrier, item: Return) -> None:
    """The approval's booking is made by the carrier, its answer lost (TransientError)."""
    carrier.lose_next_answer = True
    with pytest.raises(TransientError):
        returns.approve(item.id, None, actor="key_lead")


def test_an_approval_books_under_the_key_of_the_parcel_the_return_holds(world, clock):
    carrier, returns, _, item = awaiting_approval(world, clock)
    approval_answer_lost(returns, carrier, item)

    approved = returns.approve(item.id, None, actor="key_lead")

    key = return_booking_key(item.id, "wh-west", [("L2", 1)], 350)
    assert [(asked[1], asked[2]) for asked in carrier.asked] == [(key, [("L2", 1)])] * 2
    assert approved.tracking_number == "ACME1" and len(carrier.bookings) == 1


def test_the_booking_key_names_the_parcel_the_carrier_is_asked_for():
    destination, east = "wh-west", "wh-east"
    key = return_booking_key("rma_x", destination, [("L1", 1), ("L2", 1)], 600)

    assert key == return_booking_key("rma_x", destination, [("L2", 1), ("L1", 1)], 600)  # the same parcel
    assert len({
        key,
        return_booking_key("rma_y", destination, [("L1", 1), ("L2", 1)], 600),
        return_booking_key("rma_x", destination, [("L1", 2), ("L2", 1)], 600),
        return_booking_key("rma_x", destination, [("L1", 1)], 600),
        return_booking_key("rma_x", destination, [("L1", 1), ("L2", 1)], 700),
        return_booking_key("rma_x", east, [("L1", 1), ("L2", 1)], 600),
    }) == 6  # fmt: skip
    assert key.startswith("rma_x-") and len(key) <= 64


def test_a_carrier_plugin_naming_only_the_return_id_still_books(world, clock):
    asked = []

    class OldCarrier:
        @hookimpl(tryfirst=True)
        def oms_carrier_return_label(self, return_id):
            asked.append(return_id)
            return CarrierShipment(carrier="Old", service="Returns", tracking_number="OLD1", label=b"%PDF-1.4 old")

    returns, _ = returns_for(world, clock, OldCarrier())
    order = shipped(world, ("TSHIRT", 1))

    item = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")

    assert asked == [item.id] and (item.carrier, item.tracking_number) == ("Old", "OLD1")


# --- Bookings no return uses are cancelled with the carrier ----------------------------------------


def owed(world: World, order_id: str) -> list[str]:
    return [booking.booking_key for booking in world.order(order_id).bookings_to_cancel]


def cancel_entries(world: World, order_id: str) -> list[dict]:
    return [e.detail for e in world.history(order_id) if e.type in ("carrier_booking_cancelled",
                                                                    "carrier_booking_not_cancelled")]  # fmt: skip


def test_a_booking_whose_answer_was_lost_is_cancelled_once_the_request_made_again_books_other_lines(world, clock):
    carrier = KeyedCarrier()
    returns, _ = returns_for(world, clock, carrier)
    order = shipped(world, ("TSHIRT", 2), ("MUG", 1))
    carrier.lose_next_answer = True
    with pytest.raises(TransientError):
        returns.request(order.id, ask(("L1", 2, None)), actor="key_cs")
    first_key = carrier.asked[0][1]
    assert carrier.cancelled == []  # a retry of the same parcel may still use it

    item = returns.request(order.id, ask(("L2", 1, None)), actor="key_cs")

    assert carrier.cancelled == [first_key] and carrier.label_of(item) != first_key
    assert owed(world, order.id) == [] and world.order(order.id).unrecorded_return_labels == []
    assert cancel_entries(world, order.id) == [
        {"shipment_id": item.id, "carrier": None, "tracking_number": None, "booking_key": first_key}
    ]


def test_a_booking_whose_answer_was_lost_is_used_by_the_request_made_again_and_never_cancelled(world, clock):
    carrier = KeyedCarrier()
    returns, _ = returns_for(world, clock, carrier)
    order = shipped(world, ("TSHIRT", 2), ("MUG", 1))
    carrier.lose_next_answer = True
    with pytest.raises(TransientError):
        returns.request(order.id, ask(("L1", 2, None)), actor="key_cs")

    item = returns.request(order.id, ask(("L1", 2, None)), actor="key_cs")

    assert carrier.cancelled == [] and carrier.label_of(item) == carrier.asked[0][1]
    assert world.order(order.id).unrecorded_return_labels == [] and cancel_entries(world, order.id) == []


def test_a_maybe_made_booking_a_return_labelled_before_keys_were_kept_may_show_is_never_cancelled(world, clock):
    # The return's label was booked, and stored without its key, by the version before keys were
    # kept; a booking maybe made under its id may be that very label: cancelled, it would void the
    # label its customer holds, so it is dropped as the label the return shows, never given up.
    carrier = KeyedCarrier()
    returns, store = returns_for(world, clock, carrier)
    order = shipped(world, ("TSHIRT", 2))
    item = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")
    key = carrier.label_of(item)
    store.returns[item.id] = item.model_copy(update={"booking": None})  # as stored before keys were kept
    maybe_made = GivenUpBooking(shipment_id=item.id, booking_key=key)
    world.orders.orders[order.id] = world.order(order.id).model_copy(update={"unrecorded_return_labels": [maybe_made]})

    returns.owed_entries(world.order(order.id))  # what a reader of the history does
    world.actions.finish_carrier_work(world.order(order.id), "reconciler")

    assert world.order(order.id).unrecorded_return_labels == []
    assert owed(world, order.id) == [] and carrier.cancelled == [] and cancel_entries(world, order.id) == []


def race(world: World, returns, store, order_id: str, first: tuple, second: tuple) -> tuple[Return, Return]:
    """Two requests counting the order's returns together: the first's write lands while the
    second books, so the second loses the ordinal both booked under, and counts again."""
    real_add, writes, raced = store.add, [], []

    def add(item: Return) -> None:
        writes.append(item)
        if len(writes) == 1:
            raced.append(returns.request(order_id, ask(second), actor="key_cs"))
            return
        if len(writes) == 2:
            real_add(writes[0])
        real_add(item)

    store.add = add
    a = returns.request(order_id, ask(first), actor="key_cs")
    return a, raced[0]


def test_the_booking_of_a_request_that_lost_its_ordinal_is_cancelled_and_the_winners_label_kept(world, clock):
    carrier = KeyedCarrier()
    returns, store = returns_for(world, clock, carrier)
    order = shipped(world, ("TSHIRT", 2), ("MUG", 1))

    a, b = race(world, returns, store, order.id, ("L1", 2, None), ("L2", 1, None))

    lost = return_booking_key(a.id, "wh-west", [("L2", 1)], 350)  # B's first booking, under A's id
    assert lost in carrier.bookings and carrier.cancelled == [lost]
    assert {carrier.label_of(a), carrier.label_of(b)}.isdisjoint(carrier.cancelled)
    assert owed(world, order.id) == []


def test_a_request_that_lost_its_ordinal_to_the_same_parcel_cancels_nothing(world, clock):
    # Both ask for one T-shirt: B's first booking is under A's id and parcel, so it is A's booking
    # (the carrier answered the same one), and the label A's customer holds.
    carrier = KeyedCarrier()
    returns, store = returns_for(world, clock, carrier)
    order = shipped(world, ("TSHIRT", 2))

    a, b = race(world, returns, store, order.id, ("L1", 1, None), ("L1", 1, None))

    assert (a.ordinal, b.ordinal) == (1, 2) and carrier.label_of(a) != carrier.label_of(b)
    assert carrier.cancelled == [] and owed(world, order.id) == []
    assert world.order(order.id).unrecorded_return_labels == []


def test_an_approval_whose_answer_was_lost_has_its_booking_cancelled_when_the_return_is_rejected(world, clock):
    carrier, returns, order, item = awaiting_approval(world, clock)
    approval_answer_lost(returns, carrier, item)
    assert carrier.cancelled == []  # approving again would use it

    returns.reject(item.id, "not ours", actor="key_lead")

    assert carrier.cancelled == [return_booking_key(item.id, "wh-west", [("L2", 1)], 350)]
    assert owed(world, order.id) == [] and world.order(order.id).unrecorded_return_labels == []


def test_an_approval_whose_answer_was_lost_has_its_booking_used_by_the_next_approval(world, clock):
    carrier, returns, order, item = awaiting_approval(world, clock)
    approval_answer_lost(returns, carrier, item)

    approved = returns.approve(item.id, None, actor="key_lead")

    assert carrier.cancelled == [] and len(carrier.bookings) == 1 and approved.tracking_number == "ACME1"
    assert world.order(order.id).unrecorded_return_labels == []


def test_an_approval_that_loses_to_a_rejection_has_its_booking_cancelled(world, clock):
    carrier, returns, order, item = awaiting_approval(world, clock)
    carrier.after_booking = lambda: returns.reject(item.id, "no", actor="key_other_lead")

    with pytest.raises(Conflict):
        returns.approve(item.id, None, actor="key_lead")

    assert carrier.cancelled == list(carrier.bookings) and len(carrier.bookings) == 1
    assert owed(world, order.id) == []


def test_an_approval_that_loses_to_the_same_approval_cancels_nothing(world, clock):
    carrier, returns, order, item = awaiting_approval(world, clock)
    other: list[Return] = []
    carrier.after_booking = lambda: other.append(returns.approve(item.id, None, actor="key_other_lead"))

    with pytest.raises(Conflict):
        returns.approve(item.id, None, actor="key_lead")

    assert other[0].tracking_number == "ACME1" and carrier.cancelled == [] and owed(world, order.id) == []


def labelled_return_past_its_window(clock: Clock) -> tuple[KeyedCarrier, World, Any, Any, Return]:
    """A labelled return of a shipped order, 40 days on (past a 30-day window): its carrier, world
    (whose reconciler's pass asks the carrier plugins the world has), returns service, order and return."""
    carrier = KeyedCarrier()
    world = build_world(STOCK, carrier)
    returns, _ = returns_for(world, clock, carrier)
    order = shipped(world, ("TSHIRT", 2))
    item = returns.request(order.id, ask(("L1", 1, None)), actor="key_cs")
    clock.now += timedelta(days=40)
    return carrier, world, returns, order, item


def test_an_expired_return_has_its_label_cancelled_once_by_the_reconcilers_pass(clock):
    carrier, world, returns, order, item = labelled_return_past_its_window(clock)

    assert returns.expire(item.id, clock.now - timedelta(days=30), actor="jeopardy_scan") is True
    assert returns.expire(item.id, clock.now - timedelta(days=30), actor="jeopardy_scan") is False
    returns.owed_entries(world.order(order.id))  # what a reader of the history does
    assert carrier.cancelled == [] and owed(world, order.id) == [carrier.label_of(item)]  # the scan asks no carrier
    world.actions.finish_carrier_work(world.order(order.id), "reconciler")
    world.actions.finish_carrier_work(world.order(order.id), "reconciler")

    assert carrier.cancelled == [carrier.label_of(item)] and not world.order(order.id).owes_carrier_work()
    assert cancel_entries(world, order.id) == [{
        "shipment_id": item.id, "carrier": "Acme", "tracking_number": item.tracking_number,
        "booking_key": carrier.label_of(item),
    }]  # fmt: skip


def test_a_label_cancel_the_carrier_fails_is_owed_and_made_by_the_reconcilers_pass(clock):
    carrier, world, returns, order, item = labelled_return_past_its_window(clock)
    assert returns.expire(item.id, clock.now - timedelta(days=30), actor="jeopardy_scan") is True
    carrier.down = True
    world.actions.finish_carrier_work(world.order(order.id), "reconciler")
    assert owed(world, order.id) == [carrier.label_of(item)] and world.order(order.id).owes_carrier_work()

    carrier.down = False
    world.actions.finish_carrier_work(world.order(order.id), "reconciler")

    assert carrier.cancelled == [carrier.label_of(item)] and not world.order(order.id).owes_carrier_work()


def test_a_booking_whose_label_could_not_be_stored_is_cancelled_once_another_parcel_takes_its_return(
    world, clock, monkeypatch
):
    carrier = KeyedCarrier()
    returns, _ = returns_for(world, clock, carrier)
    order = shipped(world, ("TSHIRT", 2), ("MUG", 1))
    with monkeypatch.context() as patched:
        patched.setattr(world.labels, "put_label", lambda *args: (_ for _ in ()).throw(ConnectionError("S3 down")))
        with pytest.raises(ConnectionError):
            returns.request(order.id, ask(("L1", 2, None)), actor="key_cs")
    (first,) = world.order(order.id).unrecorded_return_labels
    assert (first.carrier, first.tracking_number, carrier.cancelled) == ("Acme", "ACME1", [])

    item = returns.request(order.id, ask(("L2", 1, None)), actor="key_cs")

    assert carrier.cancelled == [first.booking_key] and item.tracking_number == "ACME2"
    assert cancel_entries(world, order.id) == [first.model_dump()]
