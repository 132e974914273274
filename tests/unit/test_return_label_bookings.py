"""A return label's booking key (oms_carrier_return_label's `booking_key`): the same for a retried
booking of the same parcel, a new one when what is booked differs. A return's id comes from its
order and ordinal, so a request that failed and is made again with other lines, or a request that
lost the ordinal to a concurrent one, books under the same `return_id` with other contents."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core import hookimpl
from core.errors import TransientError
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
        if self.lose_next_answer:
            self.lose_next_answer = False
            raise TransientError("the carrier's answer timed out")
        return self.bookings[booking_key]


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


def test_an_approval_books_under_the_key_of_the_parcel_the_return_holds(world, clock):
    carrier = KeyedCarrier()
    returns, _ = returns_for(world, clock, ApprovalPolicy(), carrier)
    order = shipped(world, ("TSHIRT", 2), ("MUG", 1))
    item = returns.request(order.id, ask(("L2", 1, None)), actor="key_cs")
    carrier.lose_next_answer = True
    with pytest.raises(TransientError):
        returns.approve(item.id, None, actor="key_lead")

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
