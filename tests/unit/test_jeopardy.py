"""Jeopardy: OMS_SLA's deadlines, the scan that marks late orders (once, and only while they stay
late), the mark a status change clears, and holds that expire."""

import json
import re
from datetime import timedelta

import pytest

from core import hookimpl
from core.domain_events import EventType, order_events
from core.errors import InvalidTransition, StaleVersion
from core.events import OrderEvent
from core.holds import HoldRequest, Holds, ReleaseRequest
from core.jeopardy import (
    DEFAULT_SLA,
    HOLD_EXPIRED,
    SCAN_ACTOR,
    JeopardyScan,
    ScanIncomplete,
    Scanned,
    parse_duration,
    parse_sla,
)
from core.models import Order, OrderEdit, utc_text
from core.notifications import notifications
from core.payments import Payments
from core.ports import OrderFilter
from core.refund_service import RefundService
from core.return_models import ReceiveReturn, RequestReturn, Return, ReturnPolicyDecision
from core.returns import RETURN_EXPIRED, Returns
from core.services import OrderQueries
from core.status import WATCHED, OrderStatus, ReturnStatus
from core.workflow import CANCEL_RECORDED
from functions.plugin_loading import load_plugin_manager
from plugins.testing.memory import InMemoryLateOrders, InMemoryUnreceivedReturns
from tests.builders import NOW
from tests.unit.world import Clock, World, build_world

S = OrderStatus
STOCK = [("MUG", "wh-west", 10)]


def scan(world: World, clock: Clock, hold_expiry: timedelta | None = None, sla: str = "") -> JeopardyScan:
    return JeopardyScan(
        InMemoryLateOrders(world.orders), world.orders, world.actions.cancel, clock,
        sla=parse_sla(sla), hold_expiry=hold_expiry,
    )  # fmt: skip


# --- OMS_SLA -----------------------------------------------------------------------------------


def test_the_defaults_are_the_contracts():
    assert (
        parse_sla("")
        == parse_sla(DEFAULT_SLA)
        == {
            S.PENDING: timedelta(minutes=5),
            S.AUTHORIZED: timedelta(minutes=15),
            S.ALLOCATED: timedelta(hours=48),
            S.PARTIALLY_SHIPPED: timedelta(hours=48),  # the allocated one: each open order has a deadline
            S.BACKORDERED: timedelta(days=14),
            S.ON_HOLD: timedelta(hours=24),
        }
    )
    assert set(parse_sla("")) == WATCHED


def test_partially_shipped_unnamed_follows_the_allocated_deadline_and_named_keeps_its_own():
    # The parcels left to ship wait as an allocated order's do: a business that gives warehouses
    # 24 hours gives the rest of a partly shipped order 24 hours too, unless it says otherwise.
    assert parse_sla("allocated=24h")[S.PARTIALLY_SHIPPED] == timedelta(hours=24)
    assert parse_sla("partially_shipped=5d,allocated=24h")[S.PARTIALLY_SHIPPED] == timedelta(days=5)
    assert parse_sla("partially_shipped=5d")[S.ALLOCATED] == timedelta(hours=48)


def test_a_status_named_replaces_its_default_and_the_others_keep_theirs():
    sla = parse_sla("allocated=2d, pending=90s,partially_shipped=3d")
    assert sla[S.ALLOCATED] == timedelta(days=2)
    assert sla[S.PENDING] == timedelta(seconds=90)
    assert sla[S.PARTIALLY_SHIPPED] == timedelta(days=3)
    assert sla[S.ON_HOLD] == timedelta(hours=24)


@pytest.mark.parametrize(
    "text",
    ["allocated", "allocated=", "allocated=48", "allocated=48w", "allocated=0h", "allocated=-1h", "allocated=1.5h",
     "late=5m", "shipped=1d", "cancelled=1d", "pending=5m,pending=6m"],
)  # fmt: skip
def test_a_malformed_sla_is_refused_and_named(text):
    with pytest.raises(ValueError, match="OMS_SLA"):
        parse_sla(text)


@pytest.mark.parametrize(
    "text",
    ["allocated=0h", "allocated=1.5h", "late=5m", "shipped=1d", "cancelled=1d", "on_hold=5m,delivered=1d",
     "pending=5m,pending=6m", "allocated=1d,pending=5m,allocated=2d"],
)  # fmt: skip
def test_the_template_refuses_at_deploy_a_status_or_deadline_the_scan_would_stop_on(text):
    # The pattern let these through: the stack deployed and every pass of the scan then failed,
    # marking no late order and expiring no hold or return, until someone read its Errors alarm.
    from tests.template_iam import TEMPLATE

    parameter = TEMPLATE["Parameters"]["Sla"]
    assert re.fullmatch(parameter["AllowedPattern"], text) is None
    with pytest.raises(ValueError, match="OMS_SLA"):
        parse_sla(text)


def test_the_template_takes_every_status_an_order_waits_in_and_no_other():
    from core.jeopardy import WATCHED
    from tests.template_iam import TEMPLATE

    parameter = TEMPLATE["Parameters"]["Sla"]
    for text in ("", DEFAULT_SLA, parameter["Default"], "allocated=2d,pending=90s,on_hold=36500d"):
        assert re.fullmatch(parameter["AllowedPattern"], text) is not None, text
        parse_sla(text)
    for status in OrderStatus:
        other = "on_hold" if status is not S.ON_HOLD else "pending"  # a status named once
        taken = re.fullmatch(parameter["AllowedPattern"], f"{other}=5m,{status}=3d") is not None
        assert taken is (status in WATCHED), status


@pytest.mark.parametrize(
    "text",
    ["backordered=36501d", "backordered=999999d", "allocated=99999999h", "allocated=876001h",
     "pending=52560001m", "pending=5m,on_hold=100000d"],
)  # fmt: skip
def test_a_deadline_too_long_for_the_scan_to_subtract_is_refused_at_deploy_and_where_it_is_read(text):
    # The template's pattern let these through: the stack deployed, and every pass of the scan
    # then failed on it (its holds and returns too), marking no late order, until someone read
    # its Errors alarm. A "practically never" such as 99999d is the likely one.
    from tests.template_iam import TEMPLATE

    assert re.fullmatch(TEMPLATE["Parameters"]["Sla"]["AllowedPattern"], text) is None
    with pytest.raises(ValueError, match=r"OMS_SLA: .*longer than 36500d"):
        parse_sla(text)


def test_the_template_takes_each_unit_up_to_the_longest_deadline():
    from tests.template_iam import TEMPLATE

    longest = "backordered=36500d,allocated=876000h,pending=52560000m,on_hold=999999999s,authorized=9d"
    assert re.fullmatch(TEMPLATE["Parameters"]["Sla"]["AllowedPattern"], longest) is not None
    assert parse_sla(longest)[S.ALLOCATED] == timedelta(days=36500)


def test_the_longest_deadline_is_scanned(world):
    clock = Clock()
    world.place(("MUG", 1))

    done = scan(world, clock, sla="pending=36500d,on_hold=36500d").run()

    assert done.marked == []


@pytest.mark.parametrize(("text", "expected"), [("30s", 30), ("5m", 300), ("48h", 172800), ("14d", 1209600)])
def test_durations_have_four_units(text, expected):
    assert parse_duration(text) == timedelta(seconds=expected)


# --- The scan ----------------------------------------------------------------------------------------


def test_an_order_past_its_deadline_is_marked_once_with_its_status_and_since(world):
    clock = Clock()
    order_id = world.place(("MUG", 1))  # pending since NOW; deadline 5 minutes
    clock.advance(minutes=4, seconds=59)
    assert scan(world, clock).run().marked == []

    clock.advance(minutes=2)
    done = scan(world, clock).run()

    assert done.marked == [order_id] and done.in_jeopardy == 1
    order = world.order(order_id)
    assert (order.status, order.jeopardy.status, order.jeopardy.since) == (
        S.PENDING,
        S.PENDING,
        NOW + timedelta(minutes=5),
    )
    assert order.jeopardy.reason == "pending for longer than 5m"
    entry = world.history(order_id)[-1]
    assert (entry.type, entry.actor, entry.from_status, entry.to_status) == ("jeopardy", SCAN_ACTOR, None, None)
    assert entry.detail == order.jeopardy.model_dump(mode="json")
    once = world.snapshot(order_id)
    clock.advance(minutes=5)
    assert scan(world, clock).run().marked == [] and world.snapshot(order_id) == once  # never twice


def test_leaving_the_late_status_clears_the_mark_and_the_next_status_has_its_own_deadline(world):
    clock = Clock()
    order_id = world.place(("MUG", 1))
    clock.advance(minutes=10)
    scan(world, clock).run()
    assert world.order(order_id).jeopardy is not None
    world.workflow._clock = clock  # the workflow authorizes at the scan's "now"

    world.workflow.authorize_payment(order_id, attempt=0)

    authorized = world.order(order_id)
    assert (authorized.status, authorized.jeopardy, authorized.in_status_since) == (S.AUTHORIZED, None, clock.now)
    clock.advance(minutes=14)
    assert scan(world, clock).run().marked == []  # authorized has 15 minutes, counted from its own start
    clock.advance(minutes=2)
    assert scan(world, clock).run().marked == [order_id]
    assert world.order(order_id).jeopardy.status is S.AUTHORIZED


def test_a_deadline_lengthened_unmarks_the_orders_no_longer_late_by_it_and_keeps_the_others_marked(world):
    # A mark stood until its order left the status: Sla deployed with a longer deadline (the
    # runbook's fix for deadlines wrong for the business) left orders no longer late listed and
    # counted, OrdersInJeopardyAlarm on, until each moved on.
    clock = Clock()
    world.capture._clock = clock
    still_late = world.place(("MUG", 1))
    clock.advance(minutes=6)
    no_longer = world.place(("MUG", 1))
    clock.advance(minutes=6)
    assert sorted(scan(world, clock).run().marked) == sorted([still_late, no_longer])
    before = world.order(no_longer)

    done = scan(world, clock, sla="pending=10m").run()  # still_late 12 minutes pending, no_longer 6

    assert done == Scanned(unmarked=[no_longer], in_jeopardy=1)
    cleared = world.order(no_longer)
    assert (cleared.status, cleared.jeopardy, cleared.listed_late) == (S.PENDING, None, False)
    assert cleared.last_changed == before.last_changed  # no step of the order: the reconciler judges it as before
    entry = world.history(no_longer)[-1]
    assert (entry.type, entry.actor, entry.from_status, entry.to_status) == (
        OrderEvent.JEOPARDY_CLEARED, SCAN_ACTOR, None, None
    )  # fmt: skip
    assert entry.detail == {
        "status": "pending", "since": before.jeopardy.model_dump(mode="json")["since"],  # the mark's: NOW + 11m
        "reason": "not past the deadline of pending now (10m)",
    }  # fmt: skip
    assert world.order(still_late).jeopardy is not None
    assert order_events(before.model_dump(mode="json"), cleared.model_dump(mode="json")) == []  # no event
    clock.advance(minutes=3)
    assert scan(world, clock, sla="pending=10m").run() == Scanned(in_jeopardy=1)  # nothing twice
    clock.advance(minutes=2)
    assert scan(world, clock, sla="pending=10m").run().marked == [no_longer]  # late by the new deadline


class LaggingIndex(InMemoryLateOrders):
    """The late orders' index as a global secondary index may answer just after the scan's marks:
    as it was before them (eventually consistent)."""

    def __init__(self, world: World) -> None:
        super().__init__(world.orders)
        self.before_marks: int | None = None

    def unmarked_since_before(self, *args, **kwargs) -> list[str]:  # type: ignore[no-untyped-def]
        if self.before_marks is None:
            self.before_marks = super().count_in_jeopardy()
        return super().unmarked_since_before(*args, **kwargs)

    def count_in_jeopardy(self) -> int:
        return self.before_marks if self.before_marks is not None else super().count_in_jeopardy()


def test_the_orders_a_pass_marks_count_though_the_index_has_not_caught_up_with_them(world):
    # The count read the by_sla index right after the marks: an order the pass had just marked
    # could be missing from it, and the point said zero (OrdersInJeopardyAlarm, watching this metric
    # alone, fired for the first late order a run later than it could). Each is marked now.
    clock = Clock()
    late = [world.place(("MUG", 1)) for _ in range(2)]
    clock.advance(minutes=6)
    scanner = JeopardyScan(LaggingIndex(world), world.orders, world.actions.cancel, clock, sla=parse_sla(""))

    done = scanner.run()

    assert sorted(done.marked) == sorted(late) and done.in_jeopardy == 2


def test_the_jeopardy_list_has_only_the_late_orders(world):
    clock = Clock()
    late = world.place(("MUG", 1))
    clock.advance(minutes=6)
    scan(world, clock).run()
    world.capture._clock = clock
    on_time = world.place(("MUG", 1))

    listed, _ = world.orders.list(OrderFilter(jeopardy=True), 10, None)

    assert [o.id for o in listed] == [late] and on_time != late


def test_a_status_without_a_deadline_is_never_late(world):
    clock = Clock()
    order = world.allocated(("MUG", 1))
    world.actions.ship(order.id, order.shipments[0].id, None, actor="k")
    clock.advance(days=365)
    assert scan(world, clock).run().marked == []


def test_a_pickup_waiting_for_its_customer_is_late_only_past_its_collect_by():
    # allocated has 48 hours, the store's time to pick; once picked, the customer has until
    # collect_by (7 days) and the pickup expiry cancels it then: late only if that did not happen.
    world = build_world([("MUG", "store-sf", 5)])
    clock = Clock()
    waiting = world.allocated(("MUG", 1), fulfillment={"type": "pickup", "location_id": "store-sf"})
    world.actions.ready(waiting.id, waiting.shipments[0].id, actor="key_store")  # collect_by NOW + 7 days
    unpicked = world.allocated(("MUG", 1), fulfillment={"type": "pickup", "location_id": "store-sf"})

    clock.advance(days=6)
    assert scan(world, clock).run().marked == [unpicked.id]
    clock.advance(days=2, hours=23)  # collect_by + 47 hours: the expiry's to cancel, not late yet
    assert scan(world, clock).run().marked == []
    clock.advance(hours=2)
    assert scan(world, clock).run().marked == [waiting.id]

    late = world.order(waiting.id).jeopardy
    assert (late.status, late.since) == (S.ALLOCATED, NOW + timedelta(days=9))
    assert late.reason == "allocated for longer than 2d past its pickup's collect_by"


def test_a_pickup_marked_late_for_its_store_is_unmarked_once_the_store_readies_it():
    # Late to be picked, then picked: what is left is the customer's time, and the alarm stops.
    world = build_world([("MUG", "store-sf", 5)])
    clock = Clock()
    order = world.allocated(("MUG", 1), fulfillment={"type": "pickup", "location_id": "store-sf"})
    clock.advance(hours=49)
    assert scan(world, clock).run().marked == [order.id]
    world.actions._clock = clock

    readied = world.actions.ready(order.id, order.shipments[0].id, actor="key_store")

    assert readied.jeopardy is None
    done = scan(world, clock).run()
    assert (done.marked, done.in_jeopardy) == ([], 0)
    clock.advance(days=9, seconds=1)  # collect_by (ready + 7 days) + 48 hours, not expired
    assert scan(world, clock).run().marked == [order.id]


def test_a_pickup_that_never_expires_is_never_late_once_picked_and_a_late_mark_for_its_store_goes():
    # OMS_PICKUP_EXPIRY_DAYS 0: no collect_by, the customer may come whenever. Only the store's
    # picking has a deadline (allocated, 48 hours); waiting for the customer is nobody's lateness.
    world = build_world([("MUG", "store-sf", 5)])
    clock = Clock()
    world.actions._clock = clock
    world.actions._pickup_expiry = None
    waiting = world.allocated(("MUG", 1), fulfillment={"type": "pickup", "location_id": "store-sf"})
    world.actions.ready(waiting.id, waiting.shipments[0].id, actor="key_store")
    late_to_pick = world.allocated(("MUG", 1), fulfillment={"type": "pickup", "location_id": "store-sf"})

    clock.advance(hours=49)
    assert scan(world, clock).run().marked == [late_to_pick.id]
    readied = world.actions.ready(late_to_pick.id, late_to_pick.shipments[0].id, actor="key_store")
    assert (readied.shipments[0].collect_by, readied.jeopardy) == (None, None)

    clock.advance(days=365)
    done = scan(world, clock).run()
    assert (done.marked, done.in_jeopardy) == ([], 0)
    assert InMemoryLateOrders(world.orders).unmarked_since_before(S.ALLOCATED, clock.now, 10) == []


def test_an_order_marked_for_its_status_already_cannot_be_marked_again(world):
    order = world.order(world.place(("MUG", 1)))
    marked, _ = order.mark_jeopardy("late", NOW, at=NOW, actor="x")
    with pytest.raises(InvalidTransition):
        marked.mark_jeopardy("late", NOW, at=NOW, actor="x")


def test_a_pass_reads_past_no_more_than_limit_late_orders_whose_own_work_raises(world, monkeypatch):
    # Read past, each is still one of the pass's `limit`: a pass reports (and retries) no more of
    # them than it would mark.
    clock = Clock()
    placed = [world.place(("MUG", 1)) for _ in range(3)]
    clock.advance(minutes=6)

    def fails(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a record that no longer reads")

    monkeypatch.setattr(world.orders, "update", fails)
    late = InMemoryLateOrders(world.orders)
    with pytest.raises(ScanIncomplete) as raised:
        JeopardyScan(late, world.orders, world.actions.cancel, clock, sla=parse_sla(""), limit=2).run()

    assert list(raised.value.done.failed) == placed[:2]


def test_a_late_order_that_keeps_changing_under_its_mark_is_left_to_the_next_pass_and_fails_nothing(world, monkeypatch):
    # Every write of its mark loses to another change (StaleVersion once modify's retries are spent):
    # a race, not a record that no longer reads, so the pass neither fails (calling a person) nor
    # lists it among the candidates read past; the next pass marks it.
    clock = Clock()
    busy = world.place(("MUG", 1))
    calm = world.place(("MUG", 1))
    clock.advance(minutes=6)
    real = world.orders.update

    def races(order: Order, expected: Order, entries: list, **conditions: object) -> None:
        if order.id == busy:
            raise StaleVersion(f"order {order.id} changed")
        real(order, expected, entries, **conditions)

    monkeypatch.setattr(world.orders, "update", races)
    done = scan(world, clock).run()
    monkeypatch.setattr(world.orders, "update", real)

    assert (done.marked, done.failed) == ([calm], {})
    assert world.order(busy).jeopardy is None
    assert scan(world, clock).run().marked == [busy]


def test_an_order_authorized_lately_that_the_index_answers_among_the_authorized_is_not_marked(world):
    # The pending and the authorized orders share an index partition that says neither status nor
    # when it began: an order placed long ago and authorized a moment ago is answered among the
    # authorized orders past their deadline, and only the order itself says it is not late.
    clock = Clock()
    order_id = world.place(("MUG", 1))
    clock.advance(minutes=30)
    world.workflow._clock = clock
    world.workflow.authorize_payment(order_id, attempt=0)  # pending 30 minutes, within pending=1h
    clock.advance(minutes=10)  # authorized 10 minutes: within authorized=15m

    class SharedPartition(InMemoryLateOrders):
        def unmarked_since_before(self, status, before, limit, **kwargs):
            if status is not S.AUTHORIZED:
                return super().unmarked_since_before(status, before, limit, **kwargs)
            found = [o for o in world.orders.orders.values() if o.status in (S.PENDING, S.AUTHORIZED)]
            return [o.id for o in found if o.created_at < before][:limit]

    done = JeopardyScan(
        SharedPartition(world.orders), world.orders, world.actions.cancel, clock, sla=parse_sla("pending=1h")
    ).run()

    assert done.marked == [] and world.order(order_id).jeopardy is None
    clock.advance(minutes=6)
    assert scan(world, clock, sla="pending=1h").run().marked == [order_id]


def test_an_order_that_moved_on_after_the_index_was_read_is_left_alone(world):
    clock = Clock()
    order_id = world.place(("MUG", 1))
    clock.advance(minutes=6)

    class Stale(InMemoryLateOrders):
        def unmarked_since_before(self, status, before, limit, **kwargs):
            found = super().unmarked_since_before(status, before, limit, **kwargs)
            if found:
                world.workflow.authorize_payment(order_id, attempt=0)  # moves on between query and write
            return found

    done = JeopardyScan(Stale(world.orders), world.orders, world.actions.cancel, clock, sla=parse_sla("")).run()

    assert done.marked == [] and world.order(order_id).jeopardy is None


def test_the_mark_survives_a_change_that_keeps_the_status_and_a_hold_clears_it(world):
    clock = Clock()
    order_id = world.place(("MUG", 1))
    clock.advance(minutes=6)
    scan(world, clock).run()
    marked = world.order(order_id)

    edited = world.actions.edit(order_id, marked.version, OrderEdit(lines=[{"sku": "MUG", "quantity": 2}]), actor="k")
    assert (edited.status, edited.jeopardy) == (S.PENDING, marked.jeopardy)  # still late for pending

    held = Holds(world.orders, clock=clock).hold(order_id, HoldRequest(reason="other"), actor="k")
    assert held.jeopardy is None and held.in_status_since == clock.now  # on_hold's own 24 hours start


def test_each_hold_pauses_the_clock_of_the_status_it_stopped_and_its_release_resumes_it(world):
    """API.md: a release "resumes it where it stopped". The time held (nothing of a held order
    ships) counts against no deadline of the status it resumes; the time before each hold does."""
    clock = Clock()
    for service in (world.capture, world.workflow, world.actions):
        service._clock = clock
    order = world.allocated(("MUG", 1))  # allocated at NOW: 48 hours to ship
    holds = Holds(world.orders, clock=clock)
    for spent, held in ((20, 3), (20, 5)):
        clock.advance(hours=spent)
        holds.hold(order.id, HoldRequest(reason="other"), actor="k")
        clock.advance(hours=held)
        released = holds.release(order.id, ReleaseRequest(), actor="k")
        assert released.in_status_since == NOW + timedelta(hours=held + (3 if held == 5 else 0))

    clock.advance(hours=7, minutes=59)  # 47:59 of its 48 hours allocated
    assert scan(world, clock).run().marked == []
    clock.advance(minutes=2)
    assert scan(world, clock).run().marked == [order.id]
    assert world.order(order.id).jeopardy.since == NOW + timedelta(hours=48 + 3 + 5)


def test_a_late_order_held_and_released_twice_resumes_the_lateness_its_customer_was_told_of(world):
    """Marked late, then held and released twice before the next scan (the second hold finds the
    lateness the first release resumed, unmarked): the scan's next mark is of the same lateness,
    its `since` moved by the three hours held, so it is an order.jeopardy event but no second
    'delayed' notice; the order's stored document keeps it until the order leaves the status."""
    clock = Clock()
    for service in (world.capture, world.workflow, world.actions):
        service._clock = clock
    order = world.allocated(("MUG", 1))  # allocated at NOW: 48 hours to ship
    clock.advance(hours=49)
    assert scan(world, clock).run().marked == [order.id]
    told = world.order(order.id).jeopardy.since
    holds = Holds(world.orders, clock=clock)
    for held in (1, 2):
        holds.hold(order.id, HoldRequest(reason="other"), actor="k")
        clock.advance(hours=held)
        released = holds.release(order.id, ReleaseRequest(), actor="k")
    assert (released.jeopardy, released.late_resumed) == (None, told + timedelta(hours=3))

    clock.advance(minutes=1)
    assert scan(world, clock).run().marked == [order.id]
    remarked = world.order(order.id)
    stored = Order.model_validate_json(remarked.stored_json())
    assert remarked.jeopardy.since == released.late_resumed == stored.late_resumed
    old, new = (json.loads(o.stored_json()) for o in (released, remarked))
    assert [e.type for e in order_events(old, new)] == [EventType.ORDER_JEOPARDY]
    assert notifications(old, new) == []
    # Told of nothing else: a first mark of the same order, without the resumed lateness, is.
    assert [n.kind for n in notifications(old, {**new, "late_resumed": None})] == ["delayed"]


def test_a_held_order_sent_back_to_be_sourced_starts_its_new_status_clock_at_its_release(world):
    """An edit of a held allocated order sends it back to be sourced: released, it is `authorized`
    anew (its 15 minutes from the release), not the `allocated` it was held from."""
    clock = Clock()
    for service in (world.capture, world.workflow, world.actions):
        service._clock = clock
    order = world.allocated(("MUG", 1))
    clock.advance(hours=40)
    held = Holds(world.orders, clock=clock).hold(order.id, HoldRequest(reason="other"), actor="k")
    edited = world.actions.edit(order.id, held.version, OrderEdit(lines=[{"sku": "MUG", "quantity": 2}]), actor="k")
    assert (edited.status, edited.hold.resume_to, edited.hold.resume_since) == (S.ON_HOLD, S.AUTHORIZED, None)
    clock.advance(hours=1)

    released = Holds(world.orders, clock=clock).release(order.id, ReleaseRequest(), actor="k")

    assert (released.status, released.in_status_since) == (S.AUTHORIZED, clock.now)


# --- Holds that expire -----------------------------------------------------------------------------


def hold_at(world: World, clock: Clock, order_id: str) -> Order:
    return Holds(world.orders, clock=clock).hold(order_id, HoldRequest(reason="fraud_review"), actor="k")


def held_holding_stock(world: World, clock: Clock) -> str:
    """An order of 2 MUGs authorized and reserved, then held: its id."""
    order_id = world.place(("MUG", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)
    hold_at(world, clock, order_id)
    return order_id


def test_a_hold_older_than_the_expiry_is_cancelled_hold_expired_with_its_stock_and_payment_given_back(world):
    clock = Clock()
    order_id = held_holding_stock(world, clock)
    clock.advance(days=3)
    assert scan(world, clock, hold_expiry=timedelta(days=3, seconds=1)).run().expired == []

    clock.advance(seconds=2)
    done = scan(world, clock, hold_expiry=timedelta(days=3, seconds=1)).run()

    assert done.expired == [order_id]
    order = world.order(order_id)
    assert (order.status, order.payment.status, order.hold) == (S.CANCELLED, "voided", None)
    assert world.held_for(order_id) == {}
    cancelled = next(e for e in world.history(order_id) if e.type == "cancelled")
    assert (cancelled.actor, cancelled.detail["reason"]) == (SCAN_ACTOR, HOLD_EXPIRED)
    # Spelled as the API shows every time (RFC 3339 in UTC, ending in Z), as the hold's entry shows it.
    held = next(e for e in world.history(order_id) if e.type == "on_hold")
    assert cancelled.detail["held_since"] == held.model_dump(mode="json")["at"]
    assert all(line.quantity == 0 and line.cancelled_quantity > 0 for line in order.lines)
    assert order.totals.grand_total.amount == 0


def test_a_hold_half_a_second_short_of_the_expiry_is_left_on_hold_and_expires_once_past_it(world):
    clock = Clock()
    order_id = held_holding_stock(world, clock)
    clock.advance(days=1, milliseconds=-500)
    assert scan(world, clock, hold_expiry=timedelta(days=1)).run().expired == []
    assert world.order(order_id).status is S.ON_HOLD and sum(world.held_for(order_id).values()) == 2

    clock.advance(seconds=1)
    assert scan(world, clock, hold_expiry=timedelta(days=1)).run().expired == [order_id]


def test_no_hold_expires_in_a_pass_told_a_plugin_failed_to_load_and_late_orders_are_still_marked(world):
    # The handler says so when a plugin failed to load: an expiry's cancel could not void the
    # authorization. The holds wait for a pass with every plugin loaded.
    clock = Clock()
    held = held_holding_stock(world, clock)
    late = world.place(("MUG", 1))
    clock.advance(days=2)
    expiring = scan(world, clock, hold_expiry=timedelta(days=1))

    done = expiring.run(expire_holds=False)

    assert done.expired == [] and late in done.marked
    order = world.order(held)
    assert (order.status, order.payment.status) == (S.ON_HOLD, "authorized") and world.spy.voided == []
    assert sum(world.held_for(held).values()) == 2
    assert expiring.run().expired == [held]


def test_a_scan_that_dies_after_writing_the_expiry_leaves_a_cancel_the_workflow_then_finishes(world):
    """The scan writes the cancel, then its clean-up: a Lambda that dies in between leaves the
    stock reserved and the authorization held, and the next pass no longer finds the order. The
    cancel's stream record starts an execution with `finish_cancel` (functions/outbox), whose
    CancelOrder finishes it."""
    clock = Clock()
    order_id = held_holding_stock(world, clock)
    clock.advance(days=2)

    def dies(order_id: str, reason: str, actor: str) -> Order:
        raise TimeoutError("the Lambda timed out after the cancel was written")

    expiring = JeopardyScan(
        InMemoryLateOrders(world.orders), world.orders, dies, clock, sla=parse_sla(""), hold_expiry=timedelta(days=1)
    )
    with pytest.raises(ScanIncomplete, match="TimeoutError"):
        expiring.run()
    order = world.order(order_id)
    assert (order.status, order.payment.status) == (S.CANCELLED, "authorized")
    assert sum(world.held_for(order_id).values()) == 2
    assert scan(world, clock, hold_expiry=timedelta(days=1)).run().expired == []  # not found again

    world.workflow.cancel_after_failure(order_id, CANCEL_RECORDED, "a cancel recorded outside the workflow")

    order = world.order(order_id)
    assert (order.status, order.payment.status) == (S.CANCELLED, "voided")
    assert world.held_for(order_id) == {}
    assert [e.type for e in world.history(order_id)][-2:] == ["cancelled", "payment_voided"]


def test_a_clean_up_that_keeps_losing_races_does_not_stop_the_pass_and_the_workflow_finishes_it(world):
    """OrderActions.cancel raises StaleVersion when the order keeps changing under its writes: the
    expiry is recorded by then, so the pass goes on to the other holds and to the marks, and the
    cancel's own execution finishes the clean-up."""
    clock = Clock()
    raced = held_holding_stock(world, clock)
    other = held_holding_stock(world, clock)
    late = world.place(("MUG", 1))
    clock.advance(days=2)

    def cancel(order_id: str, reason: str, actor: str) -> Order:
        if order_id == raced:
            raise StaleVersion(f"order {order_id} kept changing; retry")
        return world.actions.cancel(order_id, reason, actor)

    done = JeopardyScan(
        InMemoryLateOrders(world.orders), world.orders, cancel, clock, sla=parse_sla(""), hold_expiry=timedelta(days=1)
    ).run()

    assert sorted(done.expired) == sorted([raced, other])
    assert done.marked == [late]
    assert (world.order(other).status, world.order(other).payment.status) == (S.CANCELLED, "voided")
    assert world.held_for(other) == {}
    assert (world.order(raced).status, world.order(raced).payment.status) == (S.CANCELLED, "authorized")

    world.workflow.cancel_after_failure(raced, CANCEL_RECORDED, "a cancel recorded outside the workflow")

    assert (world.order(raced).status, world.order(raced).payment.status) == (S.CANCELLED, "voided")
    assert world.held_for(raced) == {}


def test_finishing_a_recorded_cancel_leaves_an_order_that_is_not_cancelled_alone(world):
    order_id = world.place(("MUG", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)
    before = world.order(order_id)

    world.workflow.cancel_after_failure(order_id, CANCEL_RECORDED, "a record replayed by mistake")

    assert world.order(order_id) == before
    assert sum(world.held_for(order_id).values()) == 2


def test_holds_never_expire_by_default_and_a_released_order_is_not_expired(world):
    clock = Clock()
    order_id = world.place(("MUG", 1))
    hold_at(world, clock, order_id)
    clock.advance(days=100)
    assert scan(world, clock).run().expired == []  # hold_expiry None: off
    assert world.order(order_id).status is S.ON_HOLD

    Holds(world.orders, clock=clock).release(order_id, ReleaseRequest(), actor="k")
    assert scan(world, clock, hold_expiry=timedelta(days=1)).run().expired == []
    assert world.order(order_id).status is S.PENDING


def test_a_release_that_lands_before_the_expiry_wins(world):
    clock = Clock()
    order_id = world.place(("MUG", 1))
    hold_at(world, clock, order_id)
    clock.advance(days=2)

    class Racing(InMemoryLateOrders):
        def held_since_before(self, before, limit):
            found = super().held_since_before(before, limit)
            Holds(world.orders, clock=clock).release(order_id, ReleaseRequest(), actor="k")
            return found

    done = JeopardyScan(
        Racing(world.orders),
        world.orders,
        world.actions.cancel,
        clock,
        sla=parse_sla(""),
        hold_expiry=timedelta(days=1),
    ).run()

    assert done.expired == [] and world.order(order_id).status is S.PENDING


class EveryHold(InMemoryLateOrders):
    """Every order on hold since before the moment, parks included: what the index answered before
    parks were left out of it (an entry a stack wrote then, read before its next write)."""

    def held_since_before(self, before, limit):
        held = [o for o in self._orders.orders.values() if o.status is S.ON_HOLD and o.in_status_since < before]
        return [o.id for o in sorted(held, key=lambda o: o.created_at)][:limit]


def parked_holding_stock(world: World) -> str:
    """An order of 2 MUGs authorized and reserved, then parked by the workflow's failure path."""
    order_id = world.place(("MUG", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)
    assert world.workflow.park_after_failure(order_id, "States.Timeout", "")
    return order_id


@pytest.mark.parametrize("late", [InMemoryLateOrders, EveryHold])
def test_a_park_past_the_expiry_survives_while_a_merchant_hold_is_cancelled(world, late):
    """Issue 10: an infrastructure failure parks a paid order for a person, and never cancels it.
    A merchant's hold of reason `other` with the very note a park carries still expires: the park
    is told by what the park stored, not by its words."""
    clock = Clock()
    parked = parked_holding_stock(world)
    merchant = world.place(("MUG", 1))
    request = HoldRequest(reason="other", note="order workflow failed after retries: States.Timeout")
    Holds(world.orders, clock=clock).hold(merchant, request, actor="k")
    clock.advance(days=30)

    done = JeopardyScan(
        late(world.orders), world.orders, world.actions.cancel, clock, sla=parse_sla(""), hold_expiry=timedelta(days=1)
    ).run()

    assert done.expired == [merchant] and world.order(merchant).status is S.CANCELLED
    order = world.order(parked)
    assert (order.status, order.payment.status, order.hold.reason) == (S.ON_HOLD, "authorized", "other")
    assert sum(world.held_for(parked).values()) == 2 and world.spy.voided == []
    assert "cancelled" not in [e.type for e in world.history(parked)]
    # Released by a person, it carries on; held again by one, that hold expires like any other.
    Holds(world.orders, clock=clock).release(parked, ReleaseRequest(), actor="k")
    hold_at(world, clock, parked)
    clock.advance(days=2)
    assert scan(world, clock, hold_expiry=timedelta(days=1)).run().expired == [parked]


def test_the_hold_expiry_takes_the_longest_held_first_and_no_park_uses_up_its_limit(world):
    clock = Clock()
    parks = [parked_holding_stock(world) for _ in range(3)]
    recent = world.place(("MUG", 1))  # placed first of the holds, held last
    due = [world.place(("MUG", 1)) for _ in range(2)]
    for order_id in due:
        hold_at(world, clock, order_id)
    clock.advance(days=3)
    hold_at(world, clock, recent)
    clock.advance(hours=1)
    expiring = JeopardyScan(
        InMemoryLateOrders(world.orders), world.orders, world.actions.cancel, clock,
        sla=parse_sla(""), hold_expiry=timedelta(days=1), limit=1,
    )  # fmt: skip

    assert [expiring.run().expired for _ in range(3)] == [[due[0]], [due[1]], []]
    assert all(world.order(order_id).status is S.ON_HOLD for order_id in [*parks, recent])


def test_marking_an_order_stored_before_status_since_late_does_not_restart_its_status_clock(world):
    """An order stored before `status_since` existed is judged by `updated_at`, which the late mark
    moves: its hold would then expire a day late, and a mark for the status it is still in could
    come again. The first write pins the clock where it was."""
    clock = Clock()
    order_id = held_holding_stock(world, clock)
    world.orders.orders[order_id] = world.order(order_id).model_copy(update={"status_since": None})
    clock.advance(hours=25)
    assert scan(world, clock, hold_expiry=timedelta(days=2)).run().marked == [order_id]
    assert world.order(order_id).in_status_since == NOW

    clock.advance(hours=24)
    done = scan(world, clock, hold_expiry=timedelta(days=2)).run()

    assert done.expired == [order_id] and world.order(order_id).status is S.CANCELLED


def test_bookkeeping_on_an_order_stored_before_status_since_does_not_put_off_its_hold_expiry(world):
    """A write with no history entry (Bookkeeping: here an authorization key given up, as a lost
    race's void the gateway could not make) moves `updated_at` too: on an order stored before
    `status_since` existed it would restart the clock the hold expiry (and its index entry's
    `collect_by`) counts from. It is pinned there as a change's is."""
    clock = Clock()
    order_id = held_holding_stock(world, clock)
    world.orders.orders[order_id] = world.order(order_id).model_copy(update={"status_since": None})
    clock.advance(days=1)
    current = world.order(order_id)
    kept, _ = current.give_up_key("key-lost", at=clock.now)
    world.orders.update(kept, current, [])
    assert world.order(order_id).hold_expiry_counts_from == NOW

    clock.advance(days=1, seconds=1)
    done = scan(world, clock, hold_expiry=timedelta(days=2)).run()

    assert done.expired == [order_id] and world.order(order_id).status is S.CANCELLED


# --- Expired returns (OMS_RETURN_EXPIRY_DAYS) ---------------------------------------------------


class NeedsApproval:
    @hookimpl(tryfirst=True)
    def oms_return_policy(self) -> ReturnPolicyDecision:
        return ReturnPolicyDecision(needs_approval=True)


def returns_service(world: World, clock: Clock, *extra: object) -> Returns:
    plugins = load_plugin_manager(*extra, enable_test_payments=True)
    refunds = RefundService(world.orders, Payments(plugins, sleep=lambda seconds: None), clock)
    return Returns(
        world.orders, world.returns, world.catalog, world.inventory, world.labels, plugins.hook, refunds,
        clock=clock, capture=world.capture,
    )  # fmt: skip


def one_mug_returned(world: World, returns: Returns) -> Return:
    order = world.allocated(("MUG", 1))
    for shipment in order.shipments:
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")
        world.actions.deliver(order.id, shipment.id, actor="key_wh")
    lines = [{"line_id": "L1", "quantity": 1, "reason": "changed my mind"}]
    return returns.request(order.id, RequestReturn.model_validate({"lines": lines}), actor="key_cs")


def return_scan(
    world: World, clock: Clock, returns: Returns, return_expiry: timedelta | None = timedelta(days=30), limit: int = 100
) -> JeopardyScan:
    return JeopardyScan(
        InMemoryLateOrders(world.orders), world.orders, world.actions.cancel, clock, sla=parse_sla(""),
        unreceived=InMemoryUnreceivedReturns(world.returns), expire_return=returns.expire,
        return_expiry=return_expiry, limit=limit,
    )  # fmt: skip


def test_returns_nothing_of_which_arrived_within_the_expiry_are_cancelled_once_and_the_rest_left_alone(world):
    clock = Clock()
    returns = returns_service(world, clock)
    authorized = one_mug_returned(world, returns)
    requested = one_mug_returned(world, returns_service(world, clock, NeedsApproval()))
    received = one_mug_returned(world, returns)
    returns.receive(received.id, ReceiveReturn.model_validate(
        {"location_id": "wh-west", "lines": [{"line_id": "L1", "quantity": 1, "condition": "resellable"}]}
    ), "key_wh")  # fmt: skip
    clock.advance(days=20)
    young = one_mug_returned(world, returns)
    clock.advance(days=10)
    assert return_scan(world, clock, returns).run().returns_expired == []  # 30 days to the second: not yet

    clock.advance(seconds=1)
    done = return_scan(world, clock, returns).run()

    assert done.returns_expired == [authorized.id, requested.id]
    assert [world.returns.get(r.id).status for r in (authorized, requested, received, young)] == [
        ReturnStatus.CANCELLED, ReturnStatus.CANCELLED, ReturnStatus.RECEIVED, ReturnStatus.AUTHORIZED
    ]  # fmt: skip
    for item, was in ((authorized, "authorized"), (requested, "requested")):
        [entry] = [e for e in world.history(item.order_id) if e.type is OrderEvent.RETURN_CANCELLED]
        assert (entry.actor, entry.detail["return_id"], entry.detail["reason"], entry.detail["status"]) == (
            SCAN_ACTOR, item.id, RETURN_EXPIRED, was
        )  # fmt: skip
    stored = dict(world.returns.returns)
    assert return_scan(world, clock, returns).run().returns_expired == []  # a second pass changes nothing
    assert world.returns.returns == stored
    assert [e.type for e in world.history(authorized.order_id)].count(OrderEvent.RETURN_CANCELLED) == 1


def test_an_expiry_that_died_before_the_orders_entry_has_it_written_once_by_the_historys_reader(world, monkeypatch):
    clock = Clock()
    returns = returns_service(world, clock)
    item = one_mug_returned(world, returns)
    clock.advance(days=31)
    real = world.orders.update

    def dies(order: Order, expected: Order, entries: list, **conditions: object) -> None:
        raise RuntimeError("the scan's Lambda timed out here")

    monkeypatch.setattr(world.orders, "update", dies)
    with pytest.raises(ScanIncomplete, match="RuntimeError"):
        return_scan(world, clock, returns).run()
    monkeypatch.setattr(world.orders, "update", real)
    assert world.returns.get(item.id).status is ReturnStatus.CANCELLED
    assert return_scan(world, clock, returns).run().returns_expired == []  # no pass finds it again

    queries = OrderQueries(world.orders, owed_entries=returns.owed_entries)
    read = queries.history(item.order_id)

    assert read == queries.history(item.order_id) == world.history(item.order_id)
    [entry] = [e for e in read if e.type is OrderEvent.RETURN_CANCELLED]
    assert (entry.actor, entry.detail["return_id"], entry.detail["reason"], entry.detail["status"]) == (
        SCAN_ACTOR, item.id, RETURN_EXPIRED, "authorized"
    )  # fmt: skip


def test_a_return_whose_orders_entry_keeps_losing_races_does_not_stop_the_pass(world, monkeypatch):
    """The order entry of an expired return that loses every race to other changes of its order is
    left to the history's next reader; the pass expires the other returns and marks late orders."""
    clock = Clock()
    returns = returns_service(world, clock)
    raced = one_mug_returned(world, returns)
    other = one_mug_returned(world, returns)
    clock.advance(days=31)
    late = world.place(("MUG", 1))
    clock.advance(minutes=6)
    real = world.orders.update

    def races(order: Order, expected: Order, entries: list, **conditions: object) -> None:
        if order.id == raced.order_id:
            raise StaleVersion(f"order {order.id} changed")
        real(order, expected, entries, **conditions)

    monkeypatch.setattr(world.orders, "update", races)
    done = return_scan(world, clock, returns).run()
    monkeypatch.setattr(world.orders, "update", real)

    assert sorted(done.returns_expired) == sorted([raced.id, other.id])
    assert done.marked == [late]
    assert [world.returns.get(r.id).status for r in (raced, other)] == [ReturnStatus.CANCELLED] * 2
    assert [e.type for e in world.history(other.order_id)].count(OrderEvent.RETURN_CANCELLED) == 1
    assert OrderEvent.RETURN_CANCELLED not in [e.type for e in world.history(raced.order_id)]
    queries = OrderQueries(world.orders, owed_entries=returns.owed_entries)
    assert [e.type for e in queries.history(raced.order_id)].count(OrderEvent.RETURN_CANCELLED) == 1


def test_a_pass_expires_at_most_its_limit_of_returns_per_status_oldest_first(world):
    clock = Clock()
    returns = returns_service(world, clock)
    created = []
    for _ in range(3):
        created.append(one_mug_returned(world, returns).id)
        clock.advance(minutes=1)
    clock.advance(days=31)

    assert return_scan(world, clock, returns, limit=2).run().returns_expired == created[:2]
    assert return_scan(world, clock, returns, limit=2).run().returns_expired == created[2:]


def test_returns_approved_recently_cannot_hide_an_expired_return_created_after_them(world):
    clock = Clock()
    returns = returns_service(world, clock)
    asked = returns_service(world, clock, NeedsApproval())
    waiting = [one_mug_returned(world, asked) for _ in range(3)]
    clock.advance(hours=1)
    expired = one_mug_returned(world, returns)  # created after them: the index lists it last
    clock.advance(days=25)
    for item in waiting:
        returns.approve(item.id, None, actor="key_cs")  # requested long ago, approved six days before the scan
    clock.advance(days=6)

    done = return_scan(world, clock, returns, limit=2).run()

    assert done.returns_expired == [expired.id]
    assert world.returns.get(expired.id).status is ReturnStatus.CANCELLED
    assert {world.returns.get(item.id).status for item in waiting} == {ReturnStatus.AUTHORIZED}


def test_a_pass_judges_at_most_its_read_budget_of_returns_per_status(world):
    clock = Clock()
    returns = returns_service(world, clock)
    asked = returns_service(world, clock, NeedsApproval())
    waiting = [one_mug_returned(world, asked) for _ in range(3)]
    expired = one_mug_returned(world, returns)
    clock.advance(days=25)
    for item in waiting:
        returns.approve(item.id, None, actor="key_cs")
    clock.advance(days=6)
    judged: list[str] = []

    def expire(return_id, started_before, actor):
        judged.append(return_id)
        return returns.expire(return_id, started_before, actor)

    scan = JeopardyScan(
        InMemoryLateOrders(world.orders), world.orders, world.actions.cancel, clock, sla=parse_sla(""),
        unreceived=InMemoryUnreceivedReturns(world.returns), expire_return=expire,
        return_expiry=timedelta(days=30), max_reads=3,
    )  # fmt: skip

    assert scan.run().returns_expired == []  # the budget ran out on returns approved recently
    assert judged == [item.id for item in waiting]
    assert world.returns.get(expired.id).status is ReturnStatus.AUTHORIZED


def test_returns_never_expire_when_the_expiry_is_off(world):
    clock = Clock()
    returns = returns_service(world, clock)
    item = one_mug_returned(world, returns)
    clock.advance(days=400)

    assert return_scan(world, clock, returns, return_expiry=None).run().returns_expired == []
    assert world.returns.get(item.id) == item


def test_an_approved_return_counts_its_expiry_from_its_approval_and_a_requested_one_from_its_creation(world):
    clock = Clock()
    approving = returns_service(world, clock, NeedsApproval())
    approved_late = one_mug_returned(world, approving)
    never_approved = one_mug_returned(world, approving)
    clock.advance(days=29)
    approving.approve(approved_late.id, "ok after a long look", actor="key_lead")
    approved_at = clock.now
    clock.advance(days=1, seconds=1)

    done = return_scan(world, clock, approving).run()

    assert done.returns_expired == [never_approved.id]  # approved a day ago: 29 days left to send it
    assert world.returns.get(approved_late.id).status is ReturnStatus.AUTHORIZED
    clock.now = approved_at + timedelta(days=30)
    assert return_scan(world, clock, approving).run().returns_expired == []  # 30 days to the second: not yet
    clock.advance(seconds=1)
    assert return_scan(world, clock, approving).run().returns_expired == [approved_late.id]
    [entry] = [e for e in world.history(approved_late.order_id) if e.type is OrderEvent.RETURN_CANCELLED]
    assert (entry.detail["status"], entry.detail["authorized_at"]) == ("authorized", utc_text(approved_at))
