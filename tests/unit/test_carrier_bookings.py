"""What a carrier is still owed (a parcel due a new label) is finished by the reconciler's pass when
nobody touches the order again."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from core import hookimpl
from core.carrier_bookings import CarrierWorkSweep
from core.ids import booking_key
from core.ports import OrdersOwingCarrier
from core.status import OrderStatus
from plugins import flat_rate_carrier
from tests.unit.test_jeopardy import Clock
from tests.unit.world import World, build_world

S = OrderStatus
# MUG is only in the west and CAP only in the east, so an order with both ships in two parcels.
STOCK = [("MUG", "wh-west", 10), ("CAP", "wh-east", 10)]
ACTOR = "reconciler"


class Carrier:
    """A carrier plugin that books under the booking key; while `down`, it fails."""

    NAME = "Acme Parcels"

    def __init__(self) -> None:
        self.down = False

    @hookimpl(tryfirst=True)
    def oms_carrier_create_shipment(self, booking_key):
        if self.down:
            raise ConnectionError("carrier API unreachable")
        return flat_rate_carrier.CarrierShipment(
            carrier=self.NAME, service="Ground", tracking_number=f"ACME-{booking_key}", label=b"%PDF-1.4 label"
        )


class InMemoryOrdersOwingCarrier(OrdersOwingCarrier):
    def __init__(self, world: World) -> None:
        self._world = world

    def owing_since_before(self, before: datetime) -> Iterator[str]:
        owing = [o for o in self._world.orders.orders.values() if o.owes_carrier_work() and o.updated_at < before]
        return iter(o.id for o in sorted(owing, key=lambda o: o.updated_at))


@pytest.fixture
def clock() -> Clock:
    return Clock()


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


def test_a_parcel_whose_new_label_failed_is_booked_again_by_the_reconcilers_pass_untouched(world, carrier, clock):
    # Nobody cancels or ships anything else: the parcel would keep its three-mug label.
    order = world.allocated(("MUG", 3), ("CAP", 1))
    west = world.shipment_at(order, "wh-west")
    carrier.down = True
    done = world.actions.cancel(order.id, "fewer mugs", actor="key_web", lines={"L1": 2})
    assert done.labels_due == [west]
    assert sweep(world, clock).run(ACTOR) == {}  # still in its request's hands
    clock.advance(minutes=20)

    assert sweep(world, clock).run(ACTOR)[order.id].failed  # still down: still due
    assert world.order(order.id).labels_due == [west]
    carrier.down = False
    clock.advance(minutes=5)
    work = sweep(world, clock).run(ACTOR)[order.id]

    after = world.order(order.id)
    key = booking_key(west, after.rebookings)
    assert work.relabelled == [west] and work.failed == [] and after.labels_due == []
    assert after.shipment(west).tracking_number == f"ACME-{key}"
    assert after.shipment(west).label_url == f"labels/{order.id}/{key}"
    assert not after.owes_carrier_work()
    assert history_types(world, order.id).count("label_booking_failed") == 1  # the passes add none
    assert sweep(world, clock).run(ACTOR) == {}


def test_a_cancelled_order_is_no_longer_due_a_label(world, carrier, clock):
    order = world.allocated(("MUG", 3))
    carrier.down = True
    world.actions.cancel(order.id, "fewer mugs", actor="key_web", lines={"L1": 2})
    carrier.down = False

    done = world.actions.cancel(order.id, "none at all", actor="key_web")

    assert done.status is S.CANCELLED and done.labels_due == []
    clock.advance(minutes=20)
    assert sweep(world, clock).run(ACTOR) == {}
