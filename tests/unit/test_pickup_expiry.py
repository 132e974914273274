"""The reconciler's pickup expiry (core.pickups.PickupExpiry): what one pass cancels, and what it
counts as expired, on the in-memory fakes with a clock past the pickups' deadline."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from core.errors import InvalidTransition, StaleVersion
from core.holds import HoldRequest, Holds, ReleaseRequest
from core.models import utc_text
from core.pickups import PickupExpiry, PickupsExpired
from core.ports import DuePickups
from core.status import OrderStatus, ShipmentStatus
from tests.builders import NOW
from tests.unit.world import World, before_the_next_write

S, H = OrderStatus, ShipmentStatus
STOCK = [("TSHIRT", "store-sf", 5)]
PICKUP = {"fulfillment": {"type": "pickup", "location_id": "store-sf"}}
LATER = NOW + timedelta(days=7, seconds=1)  # past the default 7 days' wait


class ListedDue(DuePickups):
    """The index as one pass read it: these orders' pickups were due then. `read` counts the ids
    the pass took from it."""

    def __init__(self, *order_ids: str):
        self.order_ids = list(order_ids)
        self.read = 0

    def due(self, before: datetime) -> Iterator[str]:
        for order_id in self.order_ids:
            self.read += 1
            yield order_id


def ready_pickup(world: World, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """A pickup readied at NOW, and the clock moved past its deadline."""
    order = world.allocated(("TSHIRT", 2), **PICKUP)
    (shipment,) = order.shipments
    world.actions.ready(order.id, shipment.id, actor="key_store")
    monkeypatch.setattr(world.actions, "_clock", lambda: LATER)
    return order.id, shipment.id


def expiry(world: World, *order_ids: str) -> PickupExpiry:
    return PickupExpiry(ListedDue(*order_ids), world.orders, world.actions, lambda: LATER)


def test_a_pass_cancels_the_pickups_past_their_deadline_and_counts_them(world, monkeypatch):
    order_id, _ = ready_pickup(world, monkeypatch)

    assert expiry(world, order_id).run().expired == [order_id]

    expired = world.order(order_id)
    assert (expired.status, expired.shipments[0].status, expired.payment.status) == (S.CANCELLED, H.CANCELLED, "voided")
    assert world.level("TSHIRT", "store-sf") == (5, 0, 5)
    assert [e.type for e in world.history(order_id)].count("pickup_expired") == 1
    # Its units are cancelled with it, as any cancel's are (API.md): the line at zero, the totals too.
    (line,) = expired.lines
    assert (line.quantity, line.cancelled_quantity, line.total.amount) == (0, 2, 0)
    assert expired.totals.grand_total.amount == 0
    entry = next(e for e in world.history(order_id) if e.type == "pickup_expired")
    assert (entry.detail["lines"], entry.detail["grand_total"]["to"]["amount"]) == ({"L1": 2}, "0.00")


def test_a_pickup_is_collectable_until_its_collect_by_and_expires_only_once_past_it(world, monkeypatch):
    # "Ready for pickup longer than OMS_PICKUP_EXPIRY_DAYS" (API.md), "not collected by its
    # collect_by" (README): at collect_by itself the customer may still collect it, as the index
    # (collect_by < now) already says; a pass whose ids come from elsewhere expired it then.
    order = world.allocated(("TSHIRT", 2), **PICKUP)
    (shipment,) = order.shipments
    collect_by = world.actions.ready(order.id, shipment.id, actor="key_store").shipments[0].collect_by
    assert collect_by == NOW + timedelta(days=7)
    at_deadline = PickupExpiry(ListedDue(order.id), world.orders, world.actions, lambda: collect_by)
    monkeypatch.setattr(world.actions, "_clock", lambda: collect_by)

    assert at_deadline.run().expired == []
    with pytest.raises(InvalidTransition):
        world.order(order.id).expire_pickup(shipment.id, at=collect_by, actor="pickup_expiry")
    assert (world.order(order.id).status, world.level("TSHIRT", "store-sf")) == (S.ALLOCATED, (5, 2, 3))

    just_past = collect_by + timedelta(microseconds=1)
    monkeypatch.setattr(world.actions, "_clock", lambda: just_past)
    assert PickupExpiry(ListedDue(order.id), world.orders, world.actions, lambda: just_past).run().expired == [order.id]
    assert world.order(order.id).status is S.CANCELLED


def test_a_pickup_collected_just_before_the_expiry_wrote_is_not_counted_as_expired(world, monkeypatch):
    # The pass read the pickup waiting; the customer collected it before the expiry's write, which
    # lost and changed nothing: nothing was expired, so nothing is counted (or logged) as expired.
    order_id, shipment_id = ready_pickup(world, monkeypatch)
    before_the_next_write(world, monkeypatch, lambda: world.actions.collect(order_id, shipment_id, actor="key_store"))

    assert expiry(world, order_id).run().expired == []

    collected = world.order(order_id)
    assert (collected.status, collected.shipments[0].status) == (S.DELIVERED, H.DELIVERED)
    assert collected.payment.captured == collected.totals.grand_total
    assert "pickup_expired" not in [e.type for e in world.history(order_id)]


def test_a_pickup_being_collected_when_the_pass_runs_is_left_to_its_collect(world, monkeypatch):
    # The store handed the parcel over and its collect had asked for the capture when the pass ran:
    # the expiry cancelled the order under it, the capture was refunded and the store answered 409
    # for goods the customer took home, their units back on hand.
    order_id, shipment_id = ready_pickup(world, monkeypatch)
    passes = []
    before_the_next_write(world, monkeypatch, lambda: passes.append(expiry(world, order_id).run()), skip=1)

    collected = world.actions.collect(order_id, shipment_id, actor="key_store")

    assert [done.expired for done in passes] == [[]]
    assert (collected.status, collected.shipments[0].status) == (S.DELIVERED, H.DELIVERED)
    assert collected.payment.captured == collected.totals.grand_total and world.spy.refunded == []
    assert "pickup_expired" not in [e.type for e in world.history(order_id)]
    assert world.level("TSHIRT", "store-sf") == (3, 0, 3)


def test_a_pickup_cancelled_just_before_the_expiry_wrote_is_not_counted_as_expired(world, monkeypatch):
    order_id, _ = ready_pickup(world, monkeypatch)
    before_the_next_write(world, monkeypatch, lambda: world.actions.cancel(order_id, "changed mind", actor="key_web"))

    assert expiry(world, order_id).run().expired == []

    cancelled = world.order(order_id)
    assert (cancelled.status, cancelled.payment.status) == (S.CANCELLED, "voided")
    assert "pickup_expired" not in [e.type for e in world.history(order_id)]
    assert world.level("TSHIRT", "store-sf") == (5, 0, 5)


def test_a_clean_up_that_keeps_losing_races_leaves_the_expiry_counted_and_the_pass_going(world, monkeypatch):
    # The expiry is written; its clean-up (release, void) is the cancel's own execution's to finish.
    orders = [world.allocated(("TSHIRT", 1), **PICKUP) for _ in range(2)]
    for order in orders:
        world.actions.ready(order.id, order.shipments[0].id, actor="key_store")
    monkeypatch.setattr(world.actions, "_clock", lambda: LATER)
    first, second = (order.id for order in orders)
    real = world.actions.expire_pickup

    def loses_once(order_id: str, shipment_id: str, actor: str):
        if order_id == first:
            raise StaleVersion(f"order {order_id} kept changing; retry")
        return real(order_id, shipment_id, actor)

    monkeypatch.setattr(world.actions, "expire_pickup", loses_once)

    assert expiry(world, first, second).run().expired == [first, second]
    assert world.order(first).status is world.order(second).status is S.CANCELLED
    assert world.order(second).payment.status == "voided"


def test_a_held_pickup_past_its_deadline_is_left_to_the_person_holding_it_and_counted_apart(world, monkeypatch):
    # A hold is a person stopping the automation: the pickup stays ready, its units reserved.
    order_id, shipment_id = ready_pickup(world, monkeypatch)
    Holds(world.orders, clock=lambda: NOW).hold(order_id, HoldRequest(reason="fraud_review"), actor="key_ops")

    done = expiry(world, order_id).run()

    assert (done.expired, done.held) == ([], [order_id])
    held = world.order(order_id)
    assert (held.status, held.shipments[0].status) == (S.ON_HOLD, H.READY_FOR_PICKUP)
    assert world.level("TSHIRT", "store-sf") == (5, 2, 3)
    assert "pickup_expired" not in [e.type for e in world.history(order_id)]
    with pytest.raises(InvalidTransition, match="on hold"):
        held.expire_pickup(shipment_id, at=LATER, actor="pickup_expiry")


def test_a_held_pickup_is_out_of_the_expirys_index_and_back_in_it_once_released(world, monkeypatch):
    order_id, _ = ready_pickup(world, monkeypatch)
    due = world.order(order_id).pickup_deadline()
    holds = Holds(world.orders, clock=lambda: NOW)
    holds.hold(order_id, HoldRequest(reason="customer_request"), actor="key_ops")
    assert world.order(order_id).pickup_deadline() is None  # nothing for the expiry to find

    holds.release(order_id, ReleaseRequest(), actor="key_ops")

    assert world.order(order_id).pickup_deadline() == due  # the customer's promise, unchanged
    done = expiry(world, order_id).run()  # released past its deadline: the next pass expires it
    assert (done.expired, done.held) == ([order_id], [])
    assert (world.order(order_id).status, world.level("TSHIRT", "store-sf")) == (S.CANCELLED, (5, 0, 5))


def test_a_pickup_whose_collect_died_after_its_capture_is_not_expired_but_left_to_the_capture_sweep(world, monkeypatch):
    # The customer was at the counter: the collect asked for and got the capture, then died
    # before its write. Expiring it would refund the customer and put units they took back on hand.
    from tests.unit.world import Died, dies_before_recording

    order_id, shipment_id = ready_pickup(world, monkeypatch)
    with monkeypatch.context() as patched:
        dies_before_recording(world, patched, "shipment_delivered")
        with pytest.raises(Died):
            world.actions.collect(order_id, shipment_id, actor="key_store")
    waiting = world.order(order_id)
    assert waiting.capture_request(shipment_id) is not None

    done = expiry(world, order_id).run()

    assert done.expired == [] and world.order(order_id) == waiting
    assert world.level("TSHIRT", "store-sf") == (5, 2, 3)
    world.actions.collect(order_id, shipment_id, actor="key_store")  # the store tries again: recorded
    collected = world.order(order_id)
    assert (collected.status, collected.payment.status) == (S.DELIVERED, "captured")


def test_a_pickup_whose_collect_died_is_held_for_a_person_by_the_jeopardy_scan_once_late(world, clock):
    from tests.unit.test_capture_sweep import a_pass
    from tests.unit.world import Died, dies_before_recording

    order = world.allocated(("TSHIRT", 2), **PICKUP)
    (shipment,) = order.shipments
    world.actions.ready(order.id, shipment.id, actor="key_store")
    clock.advance(days=7)
    with pytest.MonkeyPatch.context() as patched:
        dies_before_recording(world, patched, "shipment_delivered")
        with pytest.raises(Died):
            world.actions.collect(order.id, shipment.id, actor="key_store")
    assert PickupExpiry(ListedDue(order.id), world.orders, world.actions, clock).run().expired == []
    clock.advance(hours=48, minutes=1)  # past the allocated deadline, counted from collect_by

    assert a_pass(world, clock).held == [order.id]

    held = world.order(order.id)
    assert (held.status, held.captures_requested, held.shipments[0].status) == (S.ON_HOLD, [], H.READY_FOR_PICKUP)


def held_to_confirm_a_collect(world: World, clock) -> tuple[str, str]:
    """A pickup readied at NOW whose collect died after its capture on its last day, held by the
    jeopardy scan's sweep for a person to confirm whether the customer took it, 48 h later."""
    from tests.unit.test_capture_sweep import a_pass
    from tests.unit.world import Died, dies_before_recording

    order = world.allocated(("TSHIRT", 2), **PICKUP)
    (shipment,) = order.shipments
    world.actions.ready(order.id, shipment.id, actor="key_store")
    clock.advance(days=7)
    with pytest.MonkeyPatch.context() as patched:
        dies_before_recording(world, patched, "shipment_delivered")
        with pytest.raises(Died):
            world.actions.collect(order.id, shipment.id, actor="key_store")
    clock.advance(hours=48, minutes=1)
    assert a_pass(world, clock).held == [order.id]
    return order.id, shipment.id


def test_a_pickup_released_once_a_person_confirms_its_collect_is_not_expired_before_it_is_collected(world, clock):
    # Its hold began two days past the collect_by, so a release moved nothing (a hold placed past
    # the deadline took nothing from the customer), and the pass between the person's release and
    # their collect (a held order hands nothing over: the release comes first) cancelled an order
    # the customer had taken, its units back on sale. The release gives it a day, as any release does.
    order_id, shipment_id = held_to_confirm_a_collect(world, clock)
    clock.advance(hours=1)
    released_at = clock()

    Holds(world.orders, clock=clock).release(order_id, ReleaseRequest(note="the customer took it"), actor="key_ops")

    released = world.order(order_id)
    assert (released.status, released.shipments[0].collect_by) == (S.ALLOCATED, released_at + DAY)
    entry = world.history(order_id)[-1]
    assert entry.type == "released" and entry.detail["collect_by"] == {shipment_id: utc_text(released_at + DAY)}
    clock.advance(minutes=5)
    assert PickupExpiry(ListedDue(order_id), world.orders, world.actions, clock).run().expired == []
    world.actions.collect(order_id, shipment_id, actor="key_store")
    collected = world.order(order_id)
    assert (collected.status, collected.payment.status) == (S.DELIVERED, "captured")
    assert world.level("TSHIRT", "store-sf") == (3, 0, 3)


def test_a_pickup_released_once_a_person_finds_its_collect_never_happened_expires_a_day_later(world, clock):
    order_id, _ = held_to_confirm_a_collect(world, clock)
    released = Holds(world.orders, clock=clock).release(order_id, ReleaseRequest(note="not taken"), actor="key_ops")
    assert released.shipments[0].collect_by == clock() + DAY

    clock.advance(days=1)
    assert PickupExpiry(ListedDue(order_id), world.orders, world.actions, clock).run().expired == []
    clock.advance(seconds=1)
    assert PickupExpiry(ListedDue(order_id), world.orders, world.actions, clock).run().expired == [order_id]
    expired = world.order(order_id)
    assert (expired.status, expired.payment.status, world.level("TSHIRT", "store-sf")) == (
        S.CANCELLED,
        "voided",
        (5, 0, 5),
    )


def past_their_deadline(world: World, monkeypatch: pytest.MonkeyPatch, count: int) -> list[str]:
    """`count` pickups readied at NOW, and the clock moved past their deadline."""
    world.inventory.set_on_hand("TSHIRT", "store-sf", count, reason="count")
    orders = [world.allocated(("TSHIRT", 1), **PICKUP) for _ in range(count)]
    for order in orders:
        world.actions.ready(order.id, order.shipments[0].id, actor="key_store")
    monkeypatch.setattr(world.actions, "_clock", lambda: LATER)
    return [order.id for order in orders]


def collect_died(world: World, monkeypatch: pytest.MonkeyPatch, order_id: str) -> None:
    """Its collect asked for the capture and died before recording it: the expiry must leave the
    order, which stays earliest in the index until the jeopardy scan holds it."""
    from tests.unit.world import Died, dies_before_recording

    with monkeypatch.context() as patched:
        dies_before_recording(world, patched, "shipment_delivered")
        with pytest.raises(Died):
            world.actions.collect(order_id, world.order(order_id).shipments[0].id, actor="key_store")


def counted_reads(world: World, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the orders read from the repository from now on, one per read."""
    reads: list[str] = []
    real = world.orders.get

    def get(order_id: str, *args, **kwargs):
        reads.append(order_id)
        return real(order_id, *args, **kwargs)

    monkeypatch.setattr(world.orders, "get", get)
    return reads


def test_a_pass_reads_past_the_pickups_being_collected_to_the_ones_behind_them(world, monkeypatch):
    # Every pass took the first `limit` orders of the index: as many collects died with their
    # capture standing (left alone until the jeopardy scan holds them, 48 h later) kept every
    # pickup behind them from expiring, its units reserved and its authorization held.
    *stuck, behind = past_their_deadline(world, monkeypatch, 3)
    for order_id in stuck:
        collect_died(world, monkeypatch, order_id)
    due = ListedDue(*stuck, behind)
    reads = counted_reads(world, monkeypatch)

    done = PickupExpiry(due, world.orders, world.actions, lambda: LATER, limit=2).run()

    assert (done.expired, world.order(behind).status) == ([behind], S.CANCELLED)
    assert [world.order(order_id).status for order_id in stuck] == [S.ALLOCATED] * 2
    assert due.read == 3 and reads[:3] == [*stuck, behind]  # one read each for the orders read past


def test_a_pass_reads_no_further_than_its_read_budget(world, monkeypatch):
    *stuck, behind = past_their_deadline(world, monkeypatch, 4)
    for order_id in stuck:
        collect_died(world, monkeypatch, order_id)
    due = ListedDue(*stuck, behind)
    reads = counted_reads(world, monkeypatch)

    done = PickupExpiry(due, world.orders, world.actions, lambda: LATER, max_reads=3).run()

    assert (done.expired, due.read, reads) == ([], 3, stuck)
    assert world.order(behind).status is S.ALLOCATED  # the next pass's, once those are held


def test_a_pass_expires_at_most_limit_orders_and_reads_no_further(world, monkeypatch):
    first, second = past_their_deadline(world, monkeypatch, 2)
    due = ListedDue(first, second)

    done = PickupExpiry(due, world.orders, world.actions, lambda: LATER, limit=1).run()

    assert (done.expired, due.read, world.order(second).status) == ([first], 1, S.ALLOCATED)


class FailsAfter(ListedDue):
    """The index as a pass read it, whose next page's Query then failed outright (a throttle
    outlasting botocore's retries)."""

    def __init__(self, error: Exception, *order_ids: str):
        super().__init__(*order_ids)
        self.error = error

    def due(self, before: datetime) -> Iterator[str]:
        yield from super().due(before)
        raise self.error


def test_the_pickups_a_pass_expired_before_a_later_page_failed_are_in_the_result_it_was_given(world, monkeypatch):
    # The ids come a page at a time: a later page's Query failing raised out of the pass, and the
    # reconciler reported nothing of the orders it had already cancelled (no log, no PickupsExpired).
    order_id, _ = ready_pickup(world, monkeypatch)
    throttled = RuntimeError("the next page's Query was throttled")
    done = PickupsExpired()

    with pytest.raises(RuntimeError) as raised:
        PickupExpiry(FailsAfter(throttled, order_id), world.orders, world.actions, lambda: LATER).run(done)

    assert raised.value is throttled
    assert (done.expired, world.order(order_id).status) == ([order_id], S.CANCELLED)


# --- The time a pickup was held does not count against its customer ------------------------------
DAY = timedelta(days=1)
DEADLINE = NOW + timedelta(days=7)  # a pickup readied at NOW waits 7 days by default


def held_and_released(world: World, monkeypatch: pytest.MonkeyPatch, held_at, released_at) -> tuple[str, str]:
    """A pickup readied at NOW, held by a person at `held_at` and released at `released_at`."""
    order = world.allocated(("TSHIRT", 2), **PICKUP)
    (shipment,) = order.shipments
    world.actions.ready(order.id, shipment.id, actor="key_store")
    Holds(world.orders, clock=lambda: held_at).hold(order.id, HoldRequest(reason="fraud_review"), actor="key_ops")
    Holds(world.orders, clock=lambda: released_at).release(order.id, ReleaseRequest(), actor="key_ops")
    return order.id, shipment.id


def a_pass_at(world: World, monkeypatch: pytest.MonkeyPatch, order_id: str, at) -> PickupsExpired:
    monkeypatch.setattr(world.actions, "_clock", lambda: at)
    return PickupExpiry(ListedDue(order_id), world.orders, world.actions, lambda: at).run()


def test_a_hold_that_outlasts_the_collect_by_moves_it_by_the_time_held_and_no_pass_cancels_it_before(
    world, monkeypatch
):
    # Held on day 2 of 7 and released on day 10: the next pass cancelled the order, though the
    # customer had 5 days left when a person stopped it (and a customer who came meanwhile was
    # turned away: a held order hands nothing over). The 8 days held no longer count.
    order_id, shipment_id = held_and_released(world, monkeypatch, NOW + 2 * DAY, NOW + 10 * DAY)

    released = world.order(order_id)
    assert (released.status, released.shipments[0].collect_by) == (S.ALLOCATED, DEADLINE + 8 * DAY)
    assert released.pickup_deadline() == DEADLINE + 8 * DAY  # the expiry's index key moves with it
    entry = world.history(order_id)[-1]
    assert entry.type == "released" and entry.detail["collect_by"] == {shipment_id: utc_text(DEADLINE + 8 * DAY)}

    assert a_pass_at(world, monkeypatch, order_id, NOW + 10 * DAY + timedelta(seconds=1)).expired == []
    assert world.order(order_id).status is S.ALLOCATED
    assert a_pass_at(world, monkeypatch, order_id, DEADLINE + 8 * DAY).expired == []  # collectable until then
    assert a_pass_at(world, monkeypatch, order_id, DEADLINE + 8 * DAY + timedelta(seconds=1)).expired == [order_id]


def test_a_release_leaves_the_customer_at_least_a_day_to_come_for_the_pickup(world, monkeypatch):
    # Held an hour before its deadline: the hour left would not let a customer told of the new
    # deadline come for it. A day after the release, never more than the wait they were given.
    order_id, _ = held_and_released(world, monkeypatch, DEADLINE - timedelta(hours=1), DEADLINE + 2 * DAY)

    assert world.order(order_id).shipments[0].collect_by == DEADLINE + 3 * DAY


def test_a_short_hold_well_before_the_deadline_moves_it_by_the_time_held_only(world, monkeypatch):
    order_id, _ = held_and_released(world, monkeypatch, NOW + DAY, NOW + DAY + timedelta(minutes=5))

    assert world.order(order_id).shipments[0].collect_by == DEADLINE + timedelta(minutes=5)


def test_a_hold_placed_after_the_deadline_took_no_time_from_the_customer_and_moves_nothing(world, monkeypatch):
    # Past its collect_by before the pass ran: the customer had every day they were promised.
    order_id, _ = held_and_released(world, monkeypatch, DEADLINE + timedelta(minutes=1), DEADLINE + DAY)

    assert world.order(order_id).shipments[0].collect_by == DEADLINE
    assert "collect_by" not in world.history(order_id)[-1].detail
    assert a_pass_at(world, monkeypatch, order_id, DEADLINE + DAY).expired == [order_id]


def test_a_release_retried_moves_the_deadline_once(world, monkeypatch):
    order = world.allocated(("TSHIRT", 2), **PICKUP)
    (shipment,) = order.shipments
    world.actions.ready(order.id, shipment.id, actor="key_store")
    Holds(world.orders, clock=lambda: NOW + DAY).hold(order.id, HoldRequest(reason="fraud_review"), actor="key_ops")
    first = Holds(world.orders, clock=lambda: NOW + 3 * DAY)
    again = Holds(world.orders, clock=lambda: NOW + 3 * DAY + timedelta(minutes=1))

    released = first.release(order.id, ReleaseRequest(), actor="key_ops", request_key="k1")
    retried = again.release(order.id, ReleaseRequest(), actor="key_ops", request_key="k1")

    assert released.shipments[0].collect_by == retried.shipments[0].collect_by == DEADLINE + 2 * DAY
    assert world.order(order.id).shipments[0].collect_by == DEADLINE + 2 * DAY
    assert [e.type for e in world.history(order.id)].count("released") == 1
    with pytest.raises(InvalidTransition):
        again.release(order.id, ReleaseRequest(), actor="key_ops")


def test_a_release_that_leaves_a_collect_to_confirm_held_moves_the_deadline_by_each_hold_in_turn(world, monkeypatch):
    # The collect died after its capture; a person held the order and released it, which left the
    # system's hold for a person to confirm the collect (Order.release). Both holds stopped the
    # customer: the deadline moves by the time of each, ending later by the whole time held.
    from tests.unit.world import Died, dies_before_recording

    order = world.allocated(("TSHIRT", 2), **PICKUP)
    (shipment,) = order.shipments
    world.actions.ready(order.id, shipment.id, actor="key_store")
    with monkeypatch.context() as patched:
        dies_before_recording(world, patched, "shipment_delivered")
        with pytest.raises(Died):
            world.actions.collect(order.id, shipment.id, actor="key_store")
    Holds(world.orders, clock=lambda: NOW + DAY).hold(order.id, HoldRequest(reason="fraud_review"), actor="key_ops")

    Holds(world.orders, clock=lambda: NOW + 3 * DAY).release(order.id, ReleaseRequest(), actor="key_ops")
    still = world.order(order.id)
    assert (still.status, still.shipments[0].collect_by) == (S.ON_HOLD, DEADLINE + 2 * DAY)
    Holds(world.orders, clock=lambda: NOW + 4 * DAY).release(order.id, ReleaseRequest(note="checked"), actor="key_ops")

    released = world.order(order.id)
    assert (released.status, released.shipments[0].collect_by) == (S.ALLOCATED, DEADLINE + 3 * DAY)


def test_orders_gone_cancelled_or_not_yet_due_since_the_index_was_read_do_not_use_up_a_passs_limit(world, monkeypatch):
    # "An order collected or changed since the index was read is left as it is, and not counted":
    # counted, such orders ahead of a pickup past its deadline would keep it waiting, its units held.
    gone, cancelled, not_yet_due, due = past_their_deadline(world, monkeypatch, 4)
    world.actions.cancel(cancelled, "changed mind", actor="key_web")
    del world.orders.orders[gone]
    waiting = world.order(not_yet_due)  # its deadline moved to the pass's very moment: still collectable
    moved = [shipment.model_copy(update={"collect_by": LATER}) for shipment in waiting.shipments]
    world.orders.orders[not_yet_due] = waiting.model_copy(update={"shipments": moved})

    done = PickupExpiry(
        ListedDue(gone, cancelled, not_yet_due, due), world.orders, world.actions, lambda: LATER, limit=1
    ).run()

    assert (done.expired, world.order(due).status, world.order(not_yet_due).status) == ([due], S.CANCELLED, S.ALLOCATED)


def test_a_pickup_readied_with_no_expiry_is_never_expired_however_late(world, monkeypatch):
    # OMS_PICKUP_EXPIRY_DAYS=0: the pickup waits until collected (API.md: `collect_by` null).
    order = world.allocated(("TSHIRT", 2), **PICKUP)
    (shipment,) = order.shipments
    monkeypatch.setattr(world.actions, "_pickup_expiry", None)
    ready = world.actions.ready(order.id, shipment.id, actor="key_store")
    assert ready.shipments[0].collect_by is None

    with pytest.raises(InvalidTransition, match="may still be collected"):
        ready.expire_pickup(shipment.id, at=NOW + timedelta(days=3650), actor="pickup_expiry")


def test_expiring_a_pickup_the_customer_collected_meanwhile_changes_nothing(world, monkeypatch):
    # The clean-up after an expiry's write (and the execution its stream record starts) may meet an
    # order the customer collected since: it leaves it as it is.
    order_id, shipment_id = ready_pickup(world, monkeypatch)
    collected = world.actions.collect(order_id, shipment_id, actor="key_store")

    assert world.actions.expire_pickup(order_id, shipment_id, actor="pickup_expiry") == collected
    assert world.order(order_id) == collected


def test_an_order_whose_expiry_raised_counts_toward_a_passs_limit(world, monkeypatch):
    # A pass's work stays bounded (the reconciler's time): orders that raise, read past, are tried
    # orders all the same; the pickups behind them are the next pass's.
    broken, due = past_their_deadline(world, monkeypatch, 2)
    real = world.orders.get

    def get(order_id: str, *args, **kwargs):
        if order_id == broken:
            raise ValueError("a record that no longer reads")
        return real(order_id, *args, **kwargs)

    monkeypatch.setattr(world.orders, "get", get)

    done = PickupExpiry(ListedDue(broken, due), world.orders, world.actions, lambda: LATER, limit=1).run()

    assert (list(done.failed), done.expired, world.order(due).status) == ([broken], [], S.ALLOCATED)
