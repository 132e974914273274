"""The jeopardy scan's hold expiry reads past an order whose cancel's clean-up raised (a plugin's bug):
the cancel is written, so the order is reported expired (and failed), and the holds behind it
expire in the same pass. A dependency down still ends the part at the first."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core.errors import TransientError
from core.jeopardy import JeopardyScan, ScanIncomplete, parse_sla
from core.models import Order
from core.status import OrderStatus as S
from plugins.testing.memory import InMemoryLateOrders
from tests.unit.test_jeopardy import held_holding_stock
from tests.unit.world import Clock, World

STOCK = [("MUG", "wh-west", 10)]


def expiring(world: World, clock: Clock, broken: str, error: Exception) -> JeopardyScan:
    """A scan whose cancel's clean-up raises `error` for the order `broken`."""

    def cancel(order_id: str, reason: str, actor: str) -> Order:
        if order_id == broken:
            raise error
        return world.actions.cancel(order_id, reason, actor)

    return JeopardyScan(
        InMemoryLateOrders(world.orders), world.orders, cancel, clock, sla=parse_sla(""), hold_expiry=timedelta(days=1)
    )


def test_a_hold_whose_clean_up_raises_is_read_past_and_the_holds_behind_it_expire(world):
    # Before: the `holds` part ended at the first order (the pass said "holds" failed, naming no
    # order), and the holds behind it waited for the next run, one order a run while it kept raising.
    clock = Clock()
    first, second = held_holding_stock(world, clock), held_holding_stock(world, clock)
    clock.advance(days=2)

    with pytest.raises(ScanIncomplete) as raised:
        expiring(world, clock, first, RuntimeError("a plugin's bug")).run()

    done = raised.value.done
    assert (done.expired, list(done.failed), raised.value.failed) == ([first, second], [first], [])
    assert world.order(second).status is S.CANCELLED and world.held_for(second) == {}
    assert world.order(first).status is S.CANCELLED  # its clean-up is the cancel's own execution's


def test_a_dependency_down_in_a_hold_s_clean_up_still_ends_the_part(world):
    clock = Clock()
    first, second = held_holding_stock(world, clock), held_holding_stock(world, clock)
    clock.advance(days=2)

    with pytest.raises(ScanIncomplete) as raised:
        expiring(world, clock, first, TransientError("the gateway is down")).run()

    assert [name for name, _ in raised.value.failed] == ["holds"] and raised.value.done.failed == {}
    assert world.order(second).status is S.ON_HOLD  # the next run's
