"""What the reconciler's kept-back pass left during a gateway outage or after a function's death:
units a cancel of units freed, on an order of a method whose gateway is down in the pass; the
settlement a last parcel's ship owed on an order that lost units, its function dead after its
write; and what it says of an order it failed on."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core.events import OrderEvent
from core.models import Order
from core.status import OrderStatus
from functions.adapters.dynamodb import KEPT_BACK_KEY, index_attributes
from tests.fakes import run_return_workflow
from tests.unit.test_capture_sweep import NOTHING, InMemorySettlementCaptures
from tests.unit.test_capture_sweep import sweep as capture_sweep
from tests.unit.test_death_between_writes import dies_after_recording, passes, settled_once_by_the_passes
from tests.unit.test_kept_back_sweep import sweep as kept_back_sweep
from tests.unit.test_unit_cancellation import STOCK as CANCEL_STOCK
from tests.unit.test_unit_cancellation import PerUnitShipping
from tests.unit.world import Clock, Died, World, build_world

ACTOR = "reconciler"


def cancel_dies(world: World, monkeypatch: pytest.MonkeyPatch, order: Order, lines: dict[str, int]) -> None:
    """A cancel of `lines` of `order` whose function dies right after its write."""
    died = dies_after_recording(world, monkeypatch, OrderEvent.UNITS_CANCELLED)
    with pytest.raises(Died):
        world.actions.cancel(order.id, "fewer", actor="key_web", lines=lines)
    monkeypatch.undo()
    assert died


# --- 1. Units owed a release on an order whose gateway is down in the pass ---------------------------


def test_units_owed_a_release_are_released_though_the_gateway_is_down_for_an_earlier_order(monkeypatch):
    # Before: the first order's settlement refund left pending (the gateway down) made the pass
    # skip every later order of the same payment method, though the second owed only the release
    # of a unit its cancel freed, which no gateway takes part in: the unit stayed reserved for no
    # one until the gateway came back.
    clock = Clock()
    world = build_world(CANCEL_STOCK, PerUnitShipping(), clock=clock)
    first = world.allocated(("MUG", 1), ("CAP", 3), shipping_method="per_unit")
    east = world.shipment_at(first, "wh-east")
    world.actions.ship(first.id, east, None, actor="key_wh")
    cancel_dies(world, monkeypatch, first, {"L1": 1})  # owes the MUG's shipping captured with the CAPs back
    clock.now += timedelta(minutes=1)
    second = world.allocated(("MUG", 2))
    assert second.payment.method == first.payment.method
    cancel_dies(world, monkeypatch, second, {"L1": 1})
    assert world.order(second.id).stock_owed and not world.order(second.id).settlement_owed
    assert world.held_for(second.id) == {("MUG", "wh-west", f"{second.id}#L1"): 2}
    world.gateway.script("refund", "transient")  # the gateway down for refunds
    clock.now += timedelta(minutes=20)

    done = kept_back_sweep(world, clock).run(ACTOR)

    assert [r.status for r in world.order(first.id).payment.refunds] == ["pending"]
    assert world.held_for(second.id) == {("MUG", "wh-west", f"{second.id}#L1"): 1}
    assert done.stock_released == [first.id, second.id]
    after = world.order(second.id)
    assert not after.stock_owed and index_attributes(after).get("refund_key") != {"S": KEPT_BACK_KEY}
    assert world.gateway.keys("refund") == [k for k in world.gateway.keys("refund") if first.id in k]  # none for it
    clock.now += timedelta(minutes=20)
    assert kept_back_sweep(world, clock).run(ACTOR).stock_released == []  # once
    assert world.held_for(second.id) == {("MUG", "wh-west", f"{second.id}#L1"): 1}


# --- 2. A last parcel's ship on an order that lost units, dead before settling ------------------------


def last_ship_dies(monkeypatch: pytest.MonkeyPatch, *plugins: object) -> tuple[World, Clock, Order, str]:
    """2 MUGs (wh-west) and 3 CAPs (wh-east); one CAP cancelled (the cancel settles what it can:
    nothing to ship yet), the MUGs shipped, then the CAPs' parcel, the last, whose ship's function
    dies right after its write, before settling the payment: the authorization still holds the
    cancelled CAP's worth beyond the captures. `plugins` join the world's."""
    clock = Clock()
    world = build_world(CANCEL_STOCK, *plugins, clock=clock)
    order, east = a_last_ship_that_died(world, monkeypatch)
    return world, clock, order, east


def a_last_ship_that_died(world: World, monkeypatch: pytest.MonkeyPatch) -> tuple[Order, str]:
    """last_ship_dies's order, on this world: the order as placed and its CAPs' parcel, whose ship
    died before settling (the order owes that settlement)."""
    order = world.allocated(("MUG", 2), ("CAP", 3))
    world.actions.cancel(order.id, "one cap fewer", actor="key_web", lines={"L2": 1})
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    east = world.shipment_at(order, "wh-east")
    died = dies_after_recording(world, monkeypatch, OrderEvent.SHIPMENT_SHIPPED)
    with pytest.raises(Died):
        world.actions.ship(order.id, east, None, actor="key_wh")
    monkeypatch.undo()
    shipped = world.order(order.id)
    assert died and shipped.payment.captured == shipped.totals.grand_total < shipped.payment.authorized
    assert shipped.settlement_owed
    return order, east


def test_a_last_ship_that_died_before_settling_is_settled_by_the_reconciler_once(monkeypatch):
    # Before: the ship's write recorded nothing owed (nothing captured beyond the total, no
    # credit), and only its function released what the authorization holds beyond the captures.
    # Dead, it left that to a delivery report; a carrier that never reports delivery left the
    # cancelled CAP's worth held on the customer's card until the authorization lapsed.
    world, clock, order, _ = last_ship_dies(monkeypatch)
    owing = world.order(order.id)
    assert owing.settlement_owed
    assert index_attributes(owing)["refund_key"] == {"S": KEPT_BACK_KEY}

    settled_once_by_the_passes(world, clock, order)


def test_a_last_ship_whose_function_settles_leaves_nothing_owed(monkeypatch):
    # The record is written with the ship and cleared once its function settled: out of the index.
    clock = Clock()
    world = build_world(CANCEL_STOCK, clock=clock)
    order = world.allocated(("MUG", 2), ("CAP", 3))
    world.actions.cancel(order.id, "one cap fewer", actor="key_web", lines={"L2": 1})
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    world.actions.ship(order.id, world.shipment_at(order, "wh-east"), None, actor="key_wh")

    after = world.order(order.id)
    assert after.payment.captured == after.totals.grand_total == after.payment.authorized
    assert not after.settlement_owed and "refund_key" not in index_attributes(after)


def test_a_last_ship_dead_before_settling_then_delivered_is_settled_once(monkeypatch):
    # The delivery report settles it first: the pass then only clears the record, voiding nothing again.
    world, clock, order, east = last_ship_dies(monkeypatch)
    world.actions.deliver(order.id, east, actor="key_carrier")

    passes(world, clock)

    after = world.order(order.id)
    assert after.payment.captured == after.totals.grand_total == after.payment.authorized
    assert world.spy.voided == [order.payment.authorization]
    assert not after.settlement_owed


def test_the_typical_orders_last_ship_records_nothing_owed():
    world = build_world(CANCEL_STOCK)
    order = world.allocated(("MUG", 2), ("CAP", 3))
    for location in ("wh-west", "wh-east"):
        world.actions.ship(order.id, world.shipment_at(order, location), None, actor="key_wh")
        assert "settlement_owed" not in world.order(order.id).stored_json()


# --- 4. An order the pass failed on is reported as what it owed --------------------------------------


def test_a_plugin_raising_on_an_owed_settlement_is_reported_as_the_settlement_it_failed_on(monkeypatch):
    # Before: whatever the order owed, the pass reported only that it failed, and the reconciler
    # logged "refund of what a return kept back not made" for an order no return kept anything
    # back of: here the units the cancel freed were released, and its settlement refund failed.
    from core.refund_service import OWED_SETTLEMENT

    clock = Clock()
    world = build_world(CANCEL_STOCK, PerUnitShipping(), clock=clock)
    order = world.allocated(("MUG", 1), ("CAP", 3), shipping_method="per_unit")
    world.actions.ship(order.id, world.shipment_at(order, "wh-east"), None, actor="key_wh")
    cancel_dies(world, monkeypatch, order, {"L1": 1})
    owing = world.order(order.id)
    assert owing.stock_owed and owing.settlement_owed

    def play(operation: str, idempotency_key: str) -> None:
        raise RuntimeError(f"plugin bug in {operation}")  # the plugin raising, not refusing

    monkeypatch.setattr(world.gateway, "_play", play)
    clock.now += timedelta(minutes=20)
    done = kept_back_sweep(world, clock).run(ACTOR)

    assert list(done.failed) == [order.id] and "failed in oms_payment_refund" in str(done.failed[order.id])
    assert done.failed_owing == {order.id: [OWED_SETTLEMENT]}  # the units were released first
    assert done.stock_released == [order.id]
    assert world.order(order.id).settlement_owed  # for the next pass


# --- 5. A settlement the gateway refused is not asked again by the pass ----------------------------


@pytest.mark.parametrize("by", ["last_ship", "cancel_of_the_rest"])
def test_a_release_the_gateway_refused_to_the_settling_call_is_not_asked_again_by_the_pass(by):
    # Before: the last ship of an order that lost units (or a cancel of the rest of a partly
    # shipped order) asked the void of its authorization's rest, the gateway refused it, and the
    # order kept recording its settlement owed (settlement_owed, in the kept-back index): the
    # reconciler's pass asked the refused void again, a second refusal in the history and a second
    # VoidsNotMadeAlarm point, though the passes ask no refused void again (the person the alarm
    # called releases the hold in the gateway's console). A refusal is the gateway's answer: the
    # record is cleared with it, as the pass itself clears it after one.
    clock = Clock()
    world = build_world(CANCEL_STOCK, clock=clock)
    order = world.allocated(("MUG", 2), ("CAP", 3))
    if by == "last_ship":
        world.actions.cancel(order.id, "one cap fewer", actor="key_web", lines={"L2": 1})
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    world.gateway.script("void", "refuse")

    if by == "last_ship":
        world.actions.ship(order.id, world.shipment_at(order, "wh-east"), None, actor="key_wh")
    else:
        world.actions.cancel(order.id, "the rest", actor="key_web")

    settled = world.order(order.id)
    assert settled.payment.captured == settled.totals.grand_total < settled.payment.authorized
    assert world.gateway.keys("void") == [f"{order.payment.authorization}:void"]
    assert not settled.settlement_owed and index_attributes(settled).get("refund_key") != {"S": KEPT_BACK_KEY}
    world.gateway.script("void", "approve")
    passes(world, clock)
    assert world.gateway.keys("void") == [f"{order.payment.authorization}:void"]  # not asked again
    failed = [e for e in world.history(order.id) if e.type is OrderEvent.PAYMENT_VOID_FAILED]
    assert len(failed) == 1


def rest_cancelled_without_plugin():
    """A partly shipped order (its wh-west parcel shipped) whose rest was cancelled while no payment
    plugin took its method: the settlement (a capture of the shortfall, the release of the rest) is
    owed. Returns the world, its clock, the plugin's switch (still out) and the order as placed."""
    from tests.unit.test_payment_truth import Removed

    clock = Clock()
    removed = Removed()
    world = build_world(CANCEL_STOCK, removed, clock=clock)
    order = world.allocated(("MUG", 2), ("CAP", 3))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    removed.gone = True
    world.actions.cancel(order.id, "the rest", actor="key_web")
    return world, clock, removed, order


def test_a_release_no_payment_plugin_took_stays_owed_for_the_pass_once_the_plugin_is_back():
    # Before: no payment plugin taking the order's method (taken out of the deployment) when the
    # cancel of the rest of a partly shipped order captured what its captures fall short of its
    # total and released its authorization's rest was taken for the gateway's refusal
    # (NoPaymentPlugin is a PaymentRefused): the record was cleared with it, though nobody asked
    # the gateway, and no pass settled the payment once the plugin was back (no void was asked,
    # and no alarm hears of a settlement capture not made). It stays owed, in the kept-back
    # index, and the pass asks it once the plugin answers.
    world, clock, removed, order = rest_cancelled_without_plugin()

    owing = world.order(order.id)
    assert owing.payment.captured < owing.totals.grand_total < owing.payment.authorized  # its shipping too
    assert world.spy.voided == []
    assert owing.settlement_owed and index_attributes(owing)["refund_key"] == {"S": KEPT_BACK_KEY}
    removed.gone = False
    passes(world, clock)
    after = world.order(order.id)
    assert world.spy.voided == [order.payment.authorization]  # once
    assert after.payment.captured == after.totals.grand_total == after.payment.authorized
    assert not after.settlement_owed and index_attributes(after).get("refund_key") != {"S": KEPT_BACK_KEY}


# --- 6. A gateway down for voids or captures is asked no more in the pass ----------------------------


def test_a_void_the_gateway_is_down_for_marks_its_method_down_for_the_rest_of_the_pass(monkeypatch):
    # Before: only a refund left pending marked a method's gateway down in the pass. With voids
    # transient, every order owing a last ship's settlement was asked in turn, each with its
    # retries (3 owing orders: 9 void calls), until the pass's time was up: an outage cost the
    # whole pass and hammered the gateway. The first order's retries now mark the method down:
    # the others are left, nothing recorded as moved, for the next pass; units a cancel freed are
    # still released (no gateway takes part).
    clock = Clock()
    world = build_world([("MUG", "wh-west", 20), ("CAP", "wh-east", 20)], clock=clock)
    owing: list[Order] = []
    for _ in range(3):
        order, _ = a_last_ship_that_died(world, monkeypatch)
        owing.append(world.order(order.id))
        clock.now += timedelta(minutes=1)
    stock_only = world.allocated(("MUG", 2))
    assert stock_only.payment.method == owing[0].payment.method
    cancel_dies(world, monkeypatch, stock_only, {"L1": 1})
    assert world.order(stock_only.id).stock_owed and not world.order(stock_only.id).settlement_owed
    world.gateway.script("void", "transient")
    clock.now += timedelta(minutes=20)

    done = kept_back_sweep(world, clock).run(ACTOR)

    assert world.gateway.keys("void") == [f"{owing[0].payment.authorization}:void"] * 3  # one order's retries
    assert not done.failed and done.owed_back_settled == []
    assert done.stock_released == [stock_only.id]
    assert world.held_for(stock_only.id) == {("MUG", "wh-west", f"{stock_only.id}#L1"): 1}
    for order in owing:
        after = world.order(order.id)
        assert after.payment.authorized == order.payment.authorized  # nothing recorded as released
        assert after.settlement_owed and index_attributes(after)["refund_key"] == {"S": KEPT_BACK_KEY}

    world.gateway.script("void", "approve")  # back: the next pass settles them all
    clock.now += timedelta(minutes=20)
    again = kept_back_sweep(world, clock).run(ACTOR)

    assert sorted(again.owed_back_settled) == sorted(order.id for order in owing)
    for order in owing:
        after = world.order(order.id)
        assert after.payment.captured == after.totals.grand_total == after.payment.authorized
        assert not after.settlement_owed


def test_a_settlement_capture_the_gateway_is_down_for_marks_its_method_down_and_units_are_still_released(monkeypatch):
    # Cancels of every CAP after the MUGs shipped, each dying after its write: the order owes its
    # units' release and the capture of the shipping left in its total. With captures transient,
    # each order was asked in turn with its retries (9 capture calls); now one order's retries mark
    # the method down, every order's units are still released, and nothing is recorded as captured.
    clock = Clock()
    world = build_world([("MUG", "wh-west", 20), ("CAP", "wh-east", 20)], clock=clock)
    owing: list[Order] = []
    for _ in range(3):
        order = world.allocated(("MUG", 2), ("CAP", 3))
        world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
        cancel_dies(world, monkeypatch, order, {"L2": 3})
        owing.append(world.order(order.id))
        assert owing[-1].stock_owed and owing[-1].settlement_owed
        assert owing[-1].payment.captured < owing[-1].totals.grand_total
        clock.now += timedelta(minutes=1)
    world.gateway.script("capture", "transient")
    clock.now += timedelta(minutes=20)

    done = kept_back_sweep(world, clock).run(ACTOR)

    assert world.gateway.keys("capture")[-3:] == [f"{owing[0].id}:settlement:26.81:capture"] * 3
    assert len([key for key in world.gateway.keys("capture") if ":settlement:" in key]) == 3
    assert not done.failed and done.owed_back_settled == []
    assert done.stock_released == [order.id for order in owing]
    for order in owing:
        after = world.order(order.id)
        assert after.payment.captured == order.payment.captured and after.settlement_owed
        assert world.held_for(order.id) == {}

    # The first one's request stands (it may have been made), for the settlement-capture pass; the
    # others, asked nothing, are settled by the next kept-back pass once the gateway is back.
    assert world.order(owing[0].id).capture_request(None) is not None
    world.gateway.script("capture", "approve")
    clock.now += timedelta(minutes=20)
    again = kept_back_sweep(world, clock).run(ACTOR)
    assert sorted(again.owed_back_settled) == sorted(order.id for order in owing[1:])
    for order in owing[1:]:
        after = world.order(order.id)
        assert after.payment.captured == after.totals.grand_total and not after.settlement_owed


def test_a_settlement_waiting_for_its_payment_plugin_does_not_grow_the_order_a_pass_at_a_time():
    # Before: a settlement left owed for want of a payment plugin (the method's plugin out of the
    # deployment) was asked again by every kept-back pass (each run, the order unchanged for
    # ReconcileAfterMinutes), and each added a `payment_capture_failed` (no_plugin) and a
    # `capture_not_made` entry to the order's history, which its item holds: days of it filled the
    # item toward DynamoDB's 400 KB, past which every write on the order fails. The first pass
    # notes it; the next ones add nothing while nothing else happened to the order, and the
    # settlement stays owed for when the plugin is back.
    world, clock, removed, order = rest_cancelled_without_plugin()
    clock.now += timedelta(minutes=20)
    kept_back_sweep(world, clock).run(ACTOR)
    noted = world.history(order.id)
    assert [(e.type, (e.detail or {}).get("kind")) for e in noted[-2:]] == [
        (OrderEvent.PAYMENT_CAPTURE_FAILED, "no_plugin"), (OrderEvent.CAPTURE_NOT_MADE, None),
    ]  # fmt: skip

    for _ in range(3):  # a pass as each run finds the order, unchanged for long enough
        clock.now += timedelta(minutes=20)
        kept_back_sweep(world, clock).run(ACTOR)

    assert world.history(order.id) == noted
    owing = world.order(order.id)
    assert owing.settlement_owed and not owing.captures_requested
    assert owing.payment.captured < owing.totals.grand_total
    removed.gone = False
    passes(world, clock)
    after = world.order(order.id)
    assert after.payment.captured == after.totals.grand_total == after.payment.authorized
    assert world.spy.voided == [order.payment.authorization]
    assert not after.settlement_owed


def test_a_release_waiting_for_its_payment_plugin_does_not_grow_the_order_a_pass_at_a_time(monkeypatch):
    # Before: the release of what an authorization holds beyond the captures, owed by a last ship
    # that died, asked by every kept-back pass while no payment plugin took the order's method,
    # added a `payment_void_failed` (no_plugin) entry to the order's item each run. The first is
    # noted; the next passes add none while nothing else happened to the order.
    from tests.unit.test_payment_truth import Removed

    removed = Removed()
    world, clock, order, _ = last_ship_dies(monkeypatch, removed)
    removed.gone = True
    clock.now += timedelta(minutes=20)
    kept_back_sweep(world, clock).run(ACTOR)
    noted = world.history(order.id)
    assert (noted[-1].type, (noted[-1].detail or {}).get("kind")) == (OrderEvent.PAYMENT_VOID_FAILED, "no_plugin")

    for _ in range(3):  # a pass as each run finds the order, unchanged for long enough
        clock.now += timedelta(minutes=20)
        kept_back_sweep(world, clock).run(ACTOR)

    assert world.history(order.id) == noted
    owing = world.order(order.id)
    assert owing.settlement_owed and owing.payment.captured < owing.payment.authorized  # nothing released
    removed.gone = False
    passes(world, clock)
    after = world.order(order.id)
    assert after.payment.captured == after.totals.grand_total == after.payment.authorized
    assert [e.type for e in world.history(order.id)].count(OrderEvent.PAYMENT_VOIDED) == 1
    assert not after.settlement_owed


def test_a_settlement_no_payment_plugin_takes_is_reported_and_its_method_asked_no_more_in_the_pass():
    # Before: a settlement owed on an order whose method no payment plugin takes (its plugin out
    # of the deployment) was asked by the kept-back pass and the NoPaymentPlugin swallowed: the
    # pass reported nothing (no `... owed back not settled` line, no KeptBackNotRefunded for the
    # errors alarm, though that is what it documents for an order no plugin takes), and asked
    # every other order of the method in turn, each counted against the pass's 100 asked, so
    # enough of them kept the orders of every other method from their turn, run after run. The
    # first is now reported failed (what it owed: the settlement), the method asked no more in the
    # pass, as for a gateway down; both are settled once the plugin is back.
    from core.errors import NoPaymentPlugin
    from core.refund_service import OWED_SETTLEMENT
    from tests.unit.test_payment_truth import Removed

    clock = Clock()
    removed = Removed()
    world = build_world([("MUG", "wh-west", 20), ("CAP", "wh-east", 20)], removed, clock=clock)
    owing: list[Order] = []
    for _ in range(2):
        order = world.allocated(("MUG", 2), ("CAP", 3))
        world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
        removed.gone = True
        world.actions.cancel(order.id, "the rest", actor="key_web")
        removed.gone = False
        assert world.order(order.id).settlement_owed
        owing.append(order)
        clock.now += timedelta(minutes=1)
    second = world.history(owing[1].id)
    removed.gone = True
    clock.now += timedelta(minutes=20)

    done = kept_back_sweep(world, clock).run(ACTOR)

    assert list(done.failed) == [owing[0].id] and isinstance(done.failed[owing[0].id], NoPaymentPlugin)
    assert done.failed_owing == {owing[0].id: [OWED_SETTLEMENT]}
    assert world.history(owing[1].id) == second  # not asked: no plugin takes its method either
    for order in owing:
        after = world.order(order.id)
        assert after.settlement_owed and after.payment.captured < after.totals.grand_total

    removed.gone = False
    passes(world, clock)
    for order in owing:
        after = world.order(order.id)
        assert after.payment.captured == after.totals.grand_total == after.payment.authorized
        assert not after.settlement_owed


# --- 7. A gateway outage is in the history once, however many passes it lasts -----------------------


def failures(world: World, order_id: str, event: OrderEvent) -> list[tuple[str, str]]:
    return [((e.detail or {})["kind"], e.actor) for e in world.history(order_id) if e.type is event]


def test_a_void_outage_is_recorded_once_however_many_passes_it_lasts(monkeypatch):
    # Before: the kept-back pass settled through the requests' recorder, which writes every failed
    # attempt: with voids transient, the order it asked first in each pass gained three
    # payment_void_failed entries a pass, so a day's outage grew its item (capped at 400 KB, each
    # entry write units) without bound. As the other passes do (outage_noted_once), an outage is
    # recorded once, its first attempt (when it began and what the gateway said); nothing is
    # recorded as released until the gateway does it.
    world, clock, order, _ = last_ship_dies(monkeypatch)
    world.gateway.script("void", "transient")

    for _ in range(4):
        clock.now += timedelta(minutes=20)
        done = kept_back_sweep(world, clock).run(ACTOR)
        assert not done.failed and done.owed_back_settled == []

    assert len(world.gateway.keys("void")) == 4 * 3  # asked every pass, its retries each time
    assert failures(world, order.id, OrderEvent.PAYMENT_VOID_FAILED) == [("transient", ACTOR)]
    after = world.order(order.id)
    assert after.payment.authorized == order.payment.authorized and after.settlement_owed

    world.gateway.script("void", "approve")
    clock.now += timedelta(minutes=20)
    assert kept_back_sweep(world, clock).run(ACTOR).owed_back_settled == [order.id]
    assert world.spy.voided == [order.payment.authorization]
    assert failures(world, order.id, OrderEvent.PAYMENT_VOID_FAILED) == [("transient", ACTOR)]


def test_a_settlement_capture_outage_is_recorded_once_and_its_request_left_to_the_capture_pass(monkeypatch):
    # The kept-back pass asks the settlement's capture of an order a cancel of units left short of
    # its total; the gateway down, the request stands (it may have been made), and the order moves
    # to the settlement-capture pass's index, which asks it again every pass. Before: the
    # kept-back pass wrote each of its three failed attempts. Now each order's outage is one entry
    # whichever pass met it; each pass asks one order's retries and marks the method down (no
    # failure, no alarm), the units are released by the first pass, nothing is held, and once the
    # gateway is back the capture pass records the capture and the kept-back pass the release.
    clock = Clock()
    world = build_world([("MUG", "wh-west", 20), ("CAP", "wh-east", 20)], clock=clock)
    owing: list[Order] = []
    for _ in range(2):
        order = world.allocated(("MUG", 2), ("CAP", 3))
        world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
        cancel_dies(world, monkeypatch, order, {"L2": 3})
        owing.append(world.order(order.id))
        clock.now += timedelta(minutes=1)
    requested = InMemorySettlementCaptures(world)
    world.gateway.script("capture", "transient")
    asked_before = len(world.gateway.keys("capture"))

    for round_ in range(4):
        clock.now += timedelta(minutes=20)
        kept = kept_back_sweep(world, clock).run(ACTOR)
        captured = capture_sweep(world, clock).run_settlements(requested, ACTOR)
        assert not kept.failed and kept.owed_back_settled == [] and captured == NOTHING
        if round_ == 0:
            assert kept.stock_released == [order.id for order in owing]

    # Each pass that found an order to ask asked one order's retries: the kept-back pass the first
    # two rounds (one order each), the capture pass from the second on (the first order only).
    assert len(world.gateway.keys("capture")) - asked_before == 5 * 3
    for order in owing:
        after = world.order(order.id)
        assert failures(world, order.id, OrderEvent.PAYMENT_CAPTURE_FAILED) == [("transient", ACTOR)]
        assert after.payment.captured == order.payment.captured and after.capture_request(None) is not None
        assert after.status is OrderStatus.SHIPPED and world.held_for(order.id) == {}

    world.gateway.script("capture", "approve")
    for _ in range(2):
        clock.now += timedelta(minutes=20)
        kept_back_sweep(world, clock).run(ACTOR)
        capture_sweep(world, clock).run_settlements(requested, ACTOR)
    for order in owing:
        after = world.order(order.id)
        assert after.payment.captured == after.totals.grand_total == after.payment.authorized
        assert not after.settlement_owed and after.captures_requested == []
    assert sorted(world.spy.voided) == sorted(order.payment.authorization for order in owing)


@pytest.mark.parametrize("outage", ["no_plugin", "gateway_down"])
def test_a_returns_show_is_made_though_its_method_was_marked_down_earlier_in_the_pass(outage):
    # Before: once the pass marked a payment method down (no payment plugin takes it, or the
    # gateway stayed down for an earlier order's settlement), every later order of that method was
    # skipped but for a release of units, though one that owes only its returns' show of what went
    # back for them needs no gateway: the return kept showing less than was refunded for it, and
    # with the plugin out of the deployment, run after run. It is shown; the settlement stays owed.
    from core.refund_service import PendingRefundSweep
    from core.refunds import owes_kept_back
    from tests.builders import NOW
    from tests.unit.test_kept_back_sweep import caps_delivered_while_the_gateway_was_down
    from tests.unit.test_payment_truth import Removed
    from tests.unit.test_pending_refund_sweep import InMemoryPendingRefunds
    from tests.unit.test_returns import mugs_back_after_goodwill, returns_for

    clock = Clock(NOW + timedelta(days=3))
    removed = Removed()
    world = build_world([("MUG", "wh-west", 20), ("CAP", "wh-east", 20)], removed, clock=clock)
    returns, _ = returns_for(world, clock, removed)
    owing = world.allocated(("MUG", 2), ("CAP", 3))
    world.actions.ship(owing.id, world.shipment_at(owing, "wh-west"), None, actor="key_wh")
    removed.gone = True
    world.actions.cancel(owing.id, "the rest", actor="key_web")
    removed.gone = False
    assert world.order(owing.id).settlement_owed
    clock.now += timedelta(minutes=1)
    order, caps, return_id = mugs_back_after_goodwill(world, returns)
    run_return_workflow(returns, return_id, actor="key_wh")
    caps_delivered_while_the_gateway_was_down(world, clock, order, caps)
    PendingRefundSweep(InMemoryPendingRefunds(world), world.refunds, clock, after=timedelta(minutes=15)).run(
        ACTOR, orders=[]
    )
    showing = world.order(order.id)
    assert showing.returns_to_show == [return_id] and showing.payment.method == owing.payment.method
    assert not owes_kept_back(showing) and not showing.settlement_owed and not showing.stock_owed
    assert returns.get(return_id).refund < order.lines[0].total
    if outage == "no_plugin":
        removed.gone = True
    else:
        world.gateway.script("capture", "transient")
    clock.now += timedelta(minutes=16)

    kept_back_sweep(world, clock).run(ACTOR)

    assert returns.get(return_id).refund == order.lines[0].total
    assert not world.order(order.id).returns_to_show
    assert index_attributes(world.order(order.id)).get("refund_key") != {"S": KEPT_BACK_KEY}
    assert world.order(owing.id).settlement_owed  # left for when its gateway answers


def test_the_order_a_pass_found_its_gateway_down_on_is_reported_with_what_it_owes(monkeypatch):
    # Before: a gateway that stayed down for a settlement's void (or left a settlement's refund
    # pending) marked its method down, and the pass said nothing of it: no order, no count (a
    # missing payment plugin is reported failed; a carrier down is logged and counted). The order
    # the pass found it down on is reported with what it still owes, once a pass; its method's
    # later orders, not asked, are not.
    from core.refund_service import OWED_SETTLEMENT

    clock = Clock()
    world = build_world([("MUG", "wh-west", 20), ("CAP", "wh-east", 20)], clock=clock)
    owing: list[Order] = []
    for _ in range(2):
        order, _ = a_last_ship_that_died(world, monkeypatch)
        owing.append(world.order(order.id))
        clock.now += timedelta(minutes=1)
    world.gateway.script("void", "transient")
    clock.now += timedelta(minutes=20)

    done = kept_back_sweep(world, clock).run(ACTOR)

    assert done.gateway_down == {owing[0].id: [OWED_SETTLEMENT]} and not done.failed
    world.gateway.script("void", "approve")
    clock.now += timedelta(minutes=20)
    assert kept_back_sweep(world, clock).run(ACTOR).gateway_down == {}


def test_a_settlement_refund_the_gateway_left_pending_reports_the_order_its_gateway_was_down_on(monkeypatch):
    from core.refund_service import OWED_SETTLEMENT

    clock = Clock()
    world = build_world(CANCEL_STOCK, PerUnitShipping(), clock=clock)
    first = world.allocated(("MUG", 1), ("CAP", 3), shipping_method="per_unit")
    world.actions.ship(first.id, world.shipment_at(first, "wh-east"), None, actor="key_wh")
    cancel_dies(world, monkeypatch, first, {"L1": 1})  # owes the MUG's shipping captured with the CAPs back
    world.gateway.script("refund", "transient")
    clock.now += timedelta(minutes=20)

    done = kept_back_sweep(world, clock).run(ACTOR)

    assert [r.status for r in world.order(first.id).payment.refunds] == ["pending"]
    assert done.gateway_down == {first.id: [OWED_SETTLEMENT]}
