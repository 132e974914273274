"""A cancel of units writes the order first, then calls the carrier (labels booked again, bookings
given up), then brings the order's reservations down to what its shipments still need. Before, that
last step read the shipments from the version the cancel wrote: a reject (or an edit) that sent the
order back to be sourced while the carrier was being called, and the workflow that sourced it again
elsewhere, left a new reservation that the old version's shipments did not need, and the cancel
released it: the order allocated with units nothing held, on sale to the next order.

Now the step reads the order again, and one sent back to be sourced since is left to its workflow,
as the reconciler's pass and a keyed retry leave it (UnitCancellation.release_owed, _replayed)."""

from __future__ import annotations

from core.models import Order, Shipment
from core.status import OrderStatus as S
from core.unit_cancellation import UnitCancellation
from tests.unit.world import World, build_world

STOCK = [("TSHIRT", "wh-west", 5), ("TSHIRT", "wh-east", 5)]


def rejected_and_sourced_again(world: World, order: Order, parcel: Shipment, other: str) -> None:
    """The warehouse rejects the order's parcel, and the workflow sources its one unit left (of three,
    two cancelled) at the `other` location."""
    world.actions.reject(order.id, parcel.id, "no staff", actor="key_wh")
    world.workflow.reserve_stock(order.id)
    world.workflow.create_shipments(order.id)
    assert world.level("TSHIRT", other) == (5, 1, 4)


def the_new_parcel_keeps_its_unit(world: World, order: Order, parcel: Shipment, other: str) -> None:
    after = world.order(order.id)
    (again,) = after.shipments
    assert (after.status, again.location_id) == (S.ALLOCATED, other)
    # Before: (5, 0, 5), the new parcel's unit released (oversold: on sale while the order counts on it).
    assert world.level("TSHIRT", other) == (5, 1, 4)
    assert world.level("TSHIRT", parcel.location_id) == (5, 0, 5)
    assert not after.stock_owed
    world.actions.ship(order.id, again.id, None, "key_wh")
    assert world.level("TSHIRT", other) == (4, 0, 4)


def test_a_cancel_of_units_leaves_what_the_order_reserved_again_while_it_called_the_carrier(clock, monkeypatch):
    world = build_world(STOCK, clock=clock)
    order = world.allocated(("TSHIRT", 3))
    (parcel,) = order.shipments
    other = next(loc for _, loc, _ in STOCK if loc != parcel.location_id)
    book_labels_due = UnitCancellation.book_labels_due

    def while_it_calls_the_carrier(self, written: Order, actor: str) -> Order:
        rejected_and_sourced_again(world, order, parcel, other)
        return book_labels_due(self, written, actor)

    with monkeypatch.context() as patched:
        patched.setattr(UnitCancellation, "book_labels_due", while_it_calls_the_carrier)
        world.actions.cancel(order.id, "fewer", actor="key_cs", lines={order.lines[0].line_id: 2})

    the_new_parcel_keeps_its_unit(world, order, parcel, other)
