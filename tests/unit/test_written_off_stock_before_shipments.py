"""A parcel a person wrote off (its carrier reported it delivered, the gateway refused the capture)
whose cancel died after its order write, before taking its units out of on_hand (Order.stock_owed),
read by the reconciler's kept-back pass (UnitCancellation.release_owed) or a keyed retry of the
cancel (_replayed) while the order is back before its shipments: pending, authorized or backordered,
held or not.

Before: both left that order's stock to its workflow whole, the written-off parcel's units with it:
release_owed cleared the record without shipping them, so units that had left with the carrier
stayed on hand, on sale again. Now those units leave on_hand in every branch (as a ship's do,
idempotent by reservation key), and only the rest is left to the workflow.

h337's guard (Order.check_write_off_finished) keeps a reject or an edit from sending such an order
back to be sourced until the stock step is done, so no journey reaches this state today: it is built
directly, to pin the methods themselves."""

from __future__ import annotations

import pytest

from core.models import Hold
from core.status import OrderStatus as S
from tests.builders import NOW
from tests.unit.test_delivery_write_off import PERSON
from tests.unit.test_write_off_stock_before_sourcing_again import SPLIT, a_write_off_that_died
from tests.unit.world import Died, World

STOCK = SPLIT  # four units of TSHIRT, two at each location: two parcels

BEFORE_ITS_SHIPMENTS = {
    "pending": {"status": S.PENDING},
    "authorized": {"status": S.AUTHORIZED},
    "backordered": {"status": S.BACKORDERED},
    "held from authorized": {"status": S.ON_HOLD, "hold": Hold(reason="other", since=NOW, resume_to=S.AUTHORIZED)},
}


@pytest.fixture(params=list(BEFORE_ITS_SHIPMENTS), ids=list(BEFORE_ITS_SHIPMENTS))
def written_off_before_shipments(request, world, clock, monkeypatch):
    """The died write-off's order put straight into a status before its shipments as a re-source
    leaves it (the other parcel and the allocations dropped, its reservation kept for the workflow
    to count as the order's own), but with the written-off parcel and the record of stock owed
    kept: the order, the written-off parcel, the units it held and the other parcel."""
    died, parcel, units, other = a_write_off_that_died(world, clock, monkeypatch)
    back = {"shipments": [died.shipment(parcel.id)], "allocations": [], **BEFORE_ITS_SHIPMENTS[request.param]}
    world.orders.orders[died.id] = died.model_copy(update=back)
    order = world.order(died.id)
    assert order.stock_owed and [s.id for s in order.written_off()] == [parcel.id]
    return order, parcel, units, died.shipment(other)


def never_negative(world: World) -> None:
    levels = world.inventory.stock.values()
    assert all(min(level.on_hand, level.reserved, level.available) >= 0 for level in levels)


def test_the_reconcilers_release_takes_the_written_off_units_out_of_on_hand_and_leaves_the_rest(
    world, monkeypatch, written_off_before_shipments
):
    order, parcel, _, other = written_off_before_shipments
    units = world.actions._units
    assert world.level("TSHIRT", parcel.location_id) == (2, 2, 0)

    # The first pass dies before its write (the stock step and the record's clearing are one write,
    # OrderRepository.update_with_stock: nothing moved, the record kept): the next runs it.
    def dies(*args: object) -> None:
        raise Died("before the step's write")

    with monkeypatch.context() as patched:
        patched.setattr(world.orders, "update_with_stock", dies)
        with pytest.raises(Died):
            units.release_owed(order)
    assert world.order(order.id).stock_owed
    assert world.level("TSHIRT", parcel.location_id) == (2, 2, 0)

    after = units.release_owed(world.order(order.id))

    assert not after.stock_owed
    assert world.level("TSHIRT", parcel.location_id) == (0, 0, 0)  # shipped once, not twice
    # The other location's reservation is the workflow's to settle from here: not released (as a
    # release down to what the shipments need would free it).
    assert world.level("TSHIRT", other.location_id) == (2, 2, 0)
    never_negative(world)
    assert units.release_owed(after).version == after.version  # nothing owed: nothing done


def test_a_keyed_retry_of_the_write_off_takes_its_units_out_of_on_hand_and_leaves_the_rest(
    world, written_off_before_shipments
):
    order, parcel, units, other = written_off_before_shipments
    entries = len(world.history(order.id))

    for _ in range(2):
        answered = world.actions.cancel(order.id, "capture refused: written off", actor=PERSON, lines=units,
                                        request_key="w1")  # fmt: skip
        # Answered, not cancelled again: the step's record cleared with its write, nothing else.
        assert (answered.lines, answered.status) == (order.lines, order.status)
        assert not answered.stock_owed and answered == world.order(order.id)
        assert len(world.history(order.id)) == entries
        # Before: still (2, 2, 0), the record left for a pass that never shipped them either.
        assert world.level("TSHIRT", parcel.location_id) == (0, 0, 0)
        assert world.level("TSHIRT", other.location_id) == (2, 2, 0)
        never_negative(world)

    world.actions._units.release_owed(world.order(order.id))
    assert not world.order(order.id).stock_owed
    assert world.level("TSHIRT", parcel.location_id) == (0, 0, 0)
    assert world.level("TSHIRT", other.location_id) == (2, 2, 0)
