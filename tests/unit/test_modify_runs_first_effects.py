"""core.order_changes.modify and an effect owed before anything is decided (First): run on a
consistent read only, then the order read and decided again, within the same attempts as lost races."""

from __future__ import annotations

import pytest

from core.errors import StaleVersion
from core.events import OrderEvent
from core.models import Change, Order
from core.order_changes import ATTEMPTS, First, modify
from plugins.testing.memory import InMemoryOrders
from tests.builders import NOW
from tests.unit.world import build_world


class ReadsCounted(InMemoryOrders):
    """The in-memory orders, each read's consistency in `reads`."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def get(self, order_id: str, *, consistent: bool = False) -> Order | None:
        self.reads.append("consistent" if consistent else "plain")
        return super().get(order_id, consistent=consistent)


@pytest.fixture
def orders() -> tuple[ReadsCounted, str]:
    world = build_world([("TSHIRT", "wh-west", 5)])
    order = world.allocated(("TSHIRT", 1))
    counted = ReadsCounted()
    counted.put(world.order(order.id))
    return counted, order.id


def test_an_effect_owed_first_runs_on_a_consistent_read_and_the_order_is_decided_again(orders):
    repository, order_id = orders
    log: list[str] = []

    def decide(order: Order) -> Change | First:
        log.append(f"decided after {repository.reads[-1]} read")
        if "effect" not in log:
            return First(lambda: log.append("effect"))
        return order.noted(OrderEvent.LABEL_BOOKING_FAILED, at=NOW, actor="test", detail={"message": "m"})

    modify(repository, order_id, decide)

    # The plain read may predate the write that settled it: decided again consistently, and only then run.
    assert log == [
        "decided after plain read",
        "decided after consistent read",
        "effect",
        "decided after consistent read",
    ]
    assert repository.history(order_id)[1][-1].type is OrderEvent.LABEL_BOOKING_FAILED


def test_an_effect_owed_at_every_read_ends_as_a_lost_race_does(orders):
    repository, order_id = orders
    ran: list[int] = []

    with pytest.raises(StaleVersion):
        modify(repository, order_id, lambda order: First(lambda: ran.append(1)))

    assert len(repository.reads) == ATTEMPTS
    assert len(ran) == ATTEMPTS - 1  # never after the first, plain, read
