"""Every reconciler pass stops starting work once its deadline says the invocation's time is nearly
over (core/deadline.py): it reads no order or return after that, so what it did is reported and
the rest stays in its index for the next run."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core.authorization_sweep import UnsettledAuthorizationSweep
from core.capture_sweep import UnrecordedCaptureSweep
from core.carrier_bookings import CarrierWorkSweep
from core.deadline import Deadline
from core.pickups import PickupExpiry
from core.ports import StalledOrder
from core.reconciliation import Reconciler
from core.refund_service import KeptBackSweep, PendingRefundSweep
from core.return_reconciliation import ReturnReconciler
from core.status import OrderStatus

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
BACKLOG = ["id_1", "id_2", "id_3", "id_4"]


class Backlog:
    """Every index a pass reads, each holding BACKLOG, oldest first."""

    def stalled(self, statuses: Collection[OrderStatus], created_before: datetime) -> Iterator[StalledOrder]:
        return iter([StalledOrder(order_id=f"{'+'.join(statuses)}-{i}", created_at=created_before) for i in BACKLOG])

    def __getattr__(self, name: str) -> Callable[..., Iterator[str]]:
        # created_before, due, owing_since_before, pending_since_before, owed_since_before, filled_backorders,
        # left_since_before, requested_since_before
        return lambda *args, **kwargs: iter(BACKLOG)


class Reads:
    """What a pass read (or, the pending-refund pass, asked): each id; every one found gone (None,
    [] for a refund's finish), which each pass reads past."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def _read(self, key: str, *args: Any, **kwargs: Any) -> None:
        self.ids.append(key)

    get = history = _read

    def finish_pending(self, order_id: str, *args: Any, **kwargs: Any) -> list[Any]:
        self.ids.append(order_id)
        return []


def passes(reads: Reads) -> dict[str, Callable[[Callable[[], bool]], Any]]:
    index, clock, after = Backlog(), (lambda: NOW), timedelta(minutes=15)
    none: Any = None
    return {
        "stalled orders": lambda time_up: Reconciler(
            index, reads, none, none, clock, restart_after=after, park_after=timedelta(minutes=60)
        ).run(time_up=time_up),
        "pickup expiry": lambda time_up: PickupExpiry(index, reads, none, clock).run(time_up=time_up),
        "returns": lambda time_up: ReturnReconciler(index, reads, reads, none, clock, restart_after=after).run(
            time_up=time_up
        ),
        "carrier work": lambda time_up: CarrierWorkSweep(index, reads, none, clock, after=after).run(
            "reconciler", time_up=time_up
        ),
        "pending refunds": lambda time_up: PendingRefundSweep(index, reads, clock, after=after).run(
            "reconciler", time_up=time_up
        ),
        "kept back": lambda time_up: KeptBackSweep(index, reads, none, clock, release_stock=none, after=after).run(
            "reconciler", time_up=time_up
        ),
        "authorizations": lambda time_up: UnsettledAuthorizationSweep(index, reads, none, clock, after=after).run(
            "reconciler", time_up=time_up
        ),
        "settlement captures": lambda time_up: UnrecordedCaptureSweep(reads, none, clock, after=after).run_settlements(
            index, "reconciler", time_up=time_up
        ),
    }


@pytest.mark.parametrize("name", list(passes(Reads())))
def test_a_pass_reads_nothing_more_once_its_time_is_up(name):
    everything, cut = Reads(), Reads()
    passes(everything)[name](lambda: False)
    answers = iter([False, True])  # time for one, then none: the deadline stays up once it is
    passes(cut)[name](lambda: next(answers, True))

    # Stalled orders: pending or authorized (one partition of the status index), then backordered
    # with every unit reserved.
    assert len(everything.ids) == len(BACKLOG) * (2 if name == "stalled orders" else 1)
    assert cut.ids == everything.ids[:1]


@pytest.mark.parametrize("name", list(passes(Reads())))
def test_a_pass_started_with_no_time_left_reads_nothing(name):
    reads = Reads()
    passes(reads)[name](lambda: True)
    assert reads.ids == []


def test_an_invocation_with_exactly_its_reserve_left_starts_one_more_piece_and_none_once_less_is_left():
    left = [30_001, 30_000, 29_999, 29_000]
    deadline = Deadline(lambda: left.pop(0), reserve_millis=30_000)

    assert [deadline() for _ in range(4)] == [False, False, True, True] and deadline.reached
