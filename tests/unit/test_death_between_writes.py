"""A function that dies right after the gateway's answer is recorded, before a second write that
records what it means: every retry, redelivery and reconciler pass there is must still leave the
money, or the call to a person, where it belongs."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from core.domain_events import order_events
from core.events import OrderEvent
from core.models import CREDIT_NOT_USED, HistoryEntry, Order
from core.status import NOT_LEFT, OrderStatus
from core.unit_cancellation import SETTLEMENT_REASON
from core.workflow import CANCEL_RECORDED
from functions.adapters.dynamodb import KEPT_BACK_KEY, index_attributes
from tests.builders import NOW
from tests.fakes import run_return_workflow
from tests.unit.test_authorization_sweep import sweep as authorization_sweep
from tests.unit.test_kept_back_sweep import sweep as kept_back_sweep
from tests.unit.test_pending_refund_sweep import sweep as pending_refund_sweep
from tests.unit.test_returns import STOCK as RETURNS_STOCK
from tests.unit.test_returns import exchange_of, receipt, returns_for
from tests.unit.test_unit_cancellation import STOCK as CANCEL_STOCK
from tests.unit.test_unit_cancellation import PerUnitShipping, exchanged_for_three
from tests.unit.world import Clock, Died, World, build_world

ACTOR = "reconciler"


def dies_after_recording(world: World, monkeypatch: pytest.MonkeyPatch, event: str, *, nth: int = 1) -> list[bool]:
    """The `nth` write with an entry `event` lands, and the process dies right after it, once:
    nothing the function meant to write next is written."""
    real = world.orders.update
    seen: list[bool] = []
    died: list[bool] = []

    def update(order: Order, expected: Order, entries: list[HistoryEntry], **conditions) -> None:
        real(order, expected, entries, **conditions)
        if not died and any(entry.type == event for entry in entries):
            seen.append(True)
            if len(seen) == nth:
                died.append(True)
                raise Died(event)

    monkeypatch.setattr(world.orders, "update", update)
    return died


def passes(world: World, clock: Clock | Clock) -> None:
    """The reconciler's passes that touch payments, each as a later run finds the order."""
    for _ in range(3):
        clock.now += timedelta(minutes=20)
        pending_refund_sweep(world, clock).run(ACTOR)
        authorization_sweep(world, clock).run(ACTOR)
        kept_back_sweep(world, clock).run(ACTOR)


def settled_once_by_the_passes(world: World, clock: Clock, order: Order) -> None:
    """Two rounds of the passes settle an order that owed its settlement (Order.settlement_owed):
    captured equals its total and what is authorized, nothing refunded, the rest of `order`'s
    authorization released once, and the order out of the kept-back pass's index."""
    passes(world, clock)
    passes(world, clock)

    after = world.order(order.id)
    assert after.payment.captured == after.totals.grand_total == after.payment.authorized
    assert after.payment.refunded.amount == 0
    assert world.spy.voided == [order.payment.authorization]  # once
    assert not after.settlement_owed and index_attributes(after).get("refund_key") != {"S": KEPT_BACK_KEY}


def every_pass(world: World, clock: Clock, order_id: str, shipment_id: str) -> None:
    """Every retry and pass there is for the order: deliveries and ships reported again, the
    reconciler's passes."""
    for _ in range(2):
        world.actions.deliver(order_id, shipment_id, actor="key_carrier")
        world.actions.ship(order_id, shipment_id, None, actor="key_wh")
        passes(world, clock)


def test_a_function_that_dies_after_the_third_over_capture_refusal_still_calls_a_person(monkeypatch):
    # Before: the third refusal was recorded in one write and the person told in the next; a
    # function that died between them left three refusals in a row, which nothing asks again
    # (left to a person), and no entry, no alarm, no log line: the customer's money was lost for good.
    clock = Clock()
    world = build_world(CANCEL_STOCK, PerUnitShipping(), clock=clock)
    order = world.allocated(("MUG", 1), ("CAP", 3), shipping_method="per_unit")
    east = world.shipment_at(order, "wh-east")
    world.actions.ship(order.id, east, None, actor="key_wh")
    world.gateway.script("refund", "refuse")
    world.actions.cancel(order.id, "no mug", actor="key_web", lines={"L1": 1})
    world.actions.deliver(order.id, east, actor="key_carrier")
    died = dies_after_recording(world, monkeypatch, OrderEvent.REFUND_FAILED, nth=1)
    with pytest.raises(Died):
        world.actions.deliver(order.id, east, actor="key_carrier")  # hears the third refusal
    monkeypatch.undo()
    assert died and [r.status for r in world.order(order.id).payment.refunds] == ["failed"] * 3

    every_pass(world, clock, order.id, east)

    after = world.order(order.id)
    assert [r.status for r in after.payment.refunds] == ["failed"] * 3  # nothing asks it again
    told = [e for e in world.history(order.id) if e.type is OrderEvent.OVER_CAPTURE_NOT_REFUNDED]
    assert [(e.actor, e.detail["refusals"], e.detail["amount"]) for e in told] == [
        ("key_carrier", 3, after.payment.refunds[-1].amount.model_dump(mode="json"))
    ]


def replacement_whose_rest_is_cancelled(monkeypatch: pytest.MonkeyPatch, died_after: str):
    """A TSHIRT exchanged for three MUGs: the credit pays for most of them and the MUG shipped
    (and delivered) from the west captures the rest; the two waiting in the east are cancelled,
    which refunds what the replacement's captures hold beyond its new total (the settlement) and
    gives back, on the original, the credit it no longer uses. The function dies right after its
    write recording `died_after`: (world, clock, original, replacement)."""
    clock = Clock(NOW + timedelta(days=3))
    stock = [("MUG", "wh-west", 1), ("MUG", "wh-east", 2), ("TSHIRT", "wh-west", 1)]
    world = build_world(stock, clock=clock)
    returns, _ = returns_for(world, clock)
    order, replacement = exchanged_for_three(world, returns, "TSHIRT")
    died = dies_after_recording(world, monkeypatch, died_after)
    with pytest.raises(Died):
        world.actions.cancel(replacement.id, "no more mugs", actor="key_cs", lines={"L1": 2})
    monkeypatch.undo()
    assert died
    return world, clock, order, world.order(replacement.id)


@pytest.mark.parametrize("died_after", [OrderEvent.UNITS_CANCELLED, OrderEvent.PAYMENT_REFUNDED])
def test_a_replacements_credit_a_cancel_died_before_giving_back_is_given_back_by_the_reconciler(
    monkeypatch, died_after
):
    # Before: the cancel wrote the order, refunded what its captures held beyond the new total,
    # then gave back the credit the replacement no longer used, on the original. A function that
    # died after the first write or the refund left nothing asking for the give-back (nor, after
    # the first, the settlement): nothing is left to ship or deliver, and no pass looked; the
    # customer's money stayed captured for good.
    world, clock, order, replacement = replacement_whose_rest_is_cancelled(monkeypatch, died_after)
    assert world.order(order.id).payment.refunds == []

    passes(world, clock)
    passes(world, clock)

    original, own = world.order(order.id).payment, world.order(replacement.id).payment
    given_back = [r for r in original.refunds if "did not use its credit" in r.reason]
    assert [r.status for r in given_back] == ["succeeded"]  # once, however many passes
    assert [r.status for r in own.refunds] == ["succeeded"]  # the settlement, once
    # The customer keeps one MUG: they pay its price and both orders' shipping, no more.
    kept = original.captured - original.refunded + own.captured - own.refunded
    mug = world.order(replacement.id).lines[0]
    assert kept == order.totals.shipping + world.order(replacement.id).totals.shipping + mug.total
    assert not world.order(replacement.id).settlement_owed  # out of the pass's index


def test_what_a_cancel_died_before_refunding_of_a_delivered_order_is_refunded_by_the_reconciler(monkeypatch):
    # Before: the cancel of the last parcel's units wrote the order (delivered: nothing left to ship
    # or deliver) and died before refunding what the first parcel's capture held beyond the new
    # total; nothing but a client repeating the cancel would have refunded it.
    clock = Clock()
    world = build_world(CANCEL_STOCK, PerUnitShipping(), clock=clock)
    order = world.allocated(("MUG", 1), ("CAP", 3), shipping_method="per_unit")
    east = world.shipment_at(order, "wh-east")
    world.actions.ship(order.id, east, None, actor="key_wh")
    world.actions.deliver(order.id, east, actor="key_carrier")
    died = dies_after_recording(world, monkeypatch, OrderEvent.UNITS_CANCELLED)
    with pytest.raises(Died):
        world.actions.cancel(order.id, "no mug", actor="key_web", lines={"L1": 1})
    monkeypatch.undo()
    assert died and world.order(order.id).payment.refunds == []

    passes(world, clock)
    passes(world, clock)

    after = world.order(order.id)
    assert after.status is OrderStatus.DELIVERED
    assert [(r.kind, r.status, r.reason) for r in after.payment.refunds] == [
        ("cancellation", "succeeded", SETTLEMENT_REASON)
    ]
    assert after.payment.captured - after.payment.refunded == after.totals.grand_total
    assert not after.settlement_owed


def test_what_a_reject_that_died_after_cancelling_the_rest_out_of_stock_owes_is_settled_by_the_reconciler(monkeypatch):
    # The west mug shipped; the east rejects the caps and no location has more: the reject's write
    # cancels them, leaving nothing to ship, and the function dies before releasing what the
    # authorization holds beyond the mug's capture. The write recorded that owed, for the pass.
    clock = Clock()
    world = build_world([("MUG", "wh-west", 1), ("CAP", "wh-east", 3)], clock=clock)
    order = world.allocated(("MUG", 1), ("CAP", 3))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    died = dies_after_recording(world, monkeypatch, OrderEvent.SHIPMENT_REJECTED)
    with pytest.raises(Died):
        world.actions.reject(order.id, world.shipment_at(order, "wh-east"), "no caps after all", actor="key_wh_east")
    monkeypatch.undo()
    assert died and world.order(order.id).payment.authorized > world.order(order.id).payment.captured

    passes(world, clock)

    after = world.order(order.id)
    assert after.status is OrderStatus.SHIPPED and after.lines[1].cancelled_quantity == 3
    assert after.payment.authorized == after.payment.captured == after.totals.grand_total
    assert not after.settlement_owed


def test_a_settlement_refund_the_gateway_refuses_is_asked_by_the_reconciler_until_it_is_left_to_a_person():
    # The cancel's own ask was refused and nothing is left to ship or deliver: the pass asks it
    # again (a pass later each time) until OVER_CAPTURE_REFUSALS refusals call a person, then
    # stops: the order leaves its index.
    clock = Clock()
    world = build_world(CANCEL_STOCK, PerUnitShipping(), clock=clock)
    order = world.allocated(("MUG", 1), ("CAP", 3), shipping_method="per_unit")
    east = world.shipment_at(order, "wh-east")
    world.actions.ship(order.id, east, None, actor="key_wh")
    world.actions.deliver(order.id, east, actor="key_carrier")
    world.gateway.script("refund", "refuse")
    world.actions.cancel(order.id, "no mug", actor="key_web", lines={"L1": 1})
    assert world.order(order.id).settlement_owed

    for _ in range(3):
        passes(world, clock)

    after = world.order(order.id)
    assert [r.status for r in after.payment.refunds] == ["failed"] * 3
    told = [e for e in world.history(order.id) if e.type is OrderEvent.OVER_CAPTURE_NOT_REFUNDED]
    assert [e.actor for e in told] == [ACTOR]
    assert not after.settlement_owed and index_attributes(after).get("refund_key") is None


def test_what_a_cancel_owes_back_is_stored_never_shown_and_never_on_the_typical_order():
    world = build_world(CANCEL_STOCK, PerUnitShipping())
    order = world.allocated(("MUG", 1), ("CAP", 3), shipping_method="per_unit")
    assert "settlement_owed" not in order.stored_json()
    owing = order.owing_settlement()

    assert Order.model_validate_json(owing.stored_json()).settlement_owed
    assert "settlement_owed" not in owing.model_dump_json()
    assert index_attributes(owing)["refund_key"] == {"S": KEPT_BACK_KEY}
    assert owing.version == order.version  # written with the cancel, not a version of its own


# --- Stock a cancel of units died before releasing ------------------------------------------------


def units_cancelled_by_a_function_that_dies(monkeypatch: pytest.MonkeyPatch) -> tuple[World, Clock, Order]:
    """Four MUGs allocated at the west; a cancel of one of them is written, and its function dies
    right after that write, before bringing the reservation down to the three left to ship."""
    clock = Clock()
    world = build_world(CANCEL_STOCK, clock=clock)
    order = world.allocated(("MUG", 4))
    assert world.level("MUG", "wh-west") == (5, 4, 1)
    died = dies_after_recording(world, monkeypatch, OrderEvent.UNITS_CANCELLED)
    with pytest.raises(Died):
        world.actions.cancel(order.id, "one fewer", actor="key_web", lines={"L1": 1}, request_key="key-1")
    monkeypatch.undo()
    assert died and world.order(order.id).lines[0].quantity == 3
    assert world.level("MUG", "wh-west") == (5, 4, 1)  # the unit cancelled is still reserved
    return world, clock, order


def test_units_a_cancel_died_before_releasing_are_released_by_the_reconciler_once(monkeypatch):
    # Before: nothing but the client repeating the cancel under its Idempotency-Key released the
    # unit: it stayed reserved (sold to no one) until a person looked, and the last parcel's ship
    # took all four units off on_hand for the three that left.
    world, clock, order = units_cancelled_by_a_function_that_dies(monkeypatch)
    assert index_attributes(world.order(order.id))["refund_key"] == {"S": KEPT_BACK_KEY}

    passes(world, clock)

    assert world.level("MUG", "wh-west") == (5, 3, 2)
    assert world.held_for(order.id) == {("MUG", "wh-west", f"{order.id}#L1"): 3}
    after = world.order(order.id)
    # Out of the pass's index (still in the carrier work's: the parcel's new label died with it too).
    assert not after.stock_owed and index_attributes(after).get("refund_key") != {"S": KEPT_BACK_KEY}
    passes(world, clock)  # never twice
    assert world.level("MUG", "wh-west") == (5, 3, 2)
    shipment = after.shipments[0]
    world.actions.ship(order.id, shipment.id, None, actor="key_wh")
    assert world.level("MUG", "wh-west") == (2, 0, 2)


def test_a_cancel_that_releases_its_units_leaves_nothing_owed(monkeypatch):
    # The record is written with the cancel and cleared once its units are released: the order
    # leaves the pass's index with the request that wrote it.
    clock = Clock()
    world = build_world(CANCEL_STOCK, clock=clock)
    order = world.allocated(("MUG", 4))
    world.actions.cancel(order.id, "one fewer", actor="key_web", lines={"L1": 1})

    after = world.order(order.id)
    assert world.level("MUG", "wh-west") == (5, 3, 2)
    assert not after.stock_owed and "refund_key" not in index_attributes(after)


def test_a_keyed_retry_after_the_reconciler_released_the_units_releases_nothing_more(monkeypatch):
    world, clock, order = units_cancelled_by_a_function_that_dies(monkeypatch)
    passes(world, clock)

    world.actions.cancel(order.id, "one fewer", actor="key_web", lines={"L1": 1}, request_key="key-1")

    assert world.order(order.id).lines[0].quantity == 3
    assert world.level("MUG", "wh-west") == (5, 3, 2)


def test_a_keyed_retry_before_the_reconciler_releases_the_units_and_the_pass_nothing_more(monkeypatch):
    world, clock, order = units_cancelled_by_a_function_that_dies(monkeypatch)

    world.actions.cancel(order.id, "one fewer", actor="key_web", lines={"L1": 1}, request_key="key-1")
    assert world.level("MUG", "wh-west") == (5, 3, 2)
    assert not world.order(order.id).stock_owed
    passes(world, clock)

    assert world.level("MUG", "wh-west") == (5, 3, 2)


def test_units_owed_a_release_are_stored_never_shown_and_never_on_the_typical_order():
    world = build_world(CANCEL_STOCK)
    order = world.allocated(("MUG", 4))
    assert "stock_owed" not in order.stored_json()
    owing = order.owing_stock()

    assert Order.model_validate_json(owing.stored_json()).stock_owed
    assert "stock_owed" not in owing.model_dump_json()
    assert index_attributes(owing)["refund_key"] == {"S": KEPT_BACK_KEY}
    assert owing.version == order.version  # written with the cancel, not a version of its own


def test_a_release_owed_decides_again_when_another_cancel_lands_between_its_read_and_its_write(monkeypatch):
    # The pass read the order with the parcel holding 3; a second cancel (of one more unit) landed
    # before the pass's write, and died before its own release. Before, the pass brought the
    # reservation down to the 3 it read and left the record for the second cancel. Now its write
    # (stock and record in one, conditional on the order it read) changes nothing, and the step is
    # decided again on the order as the second cancel left it: down to 2, the record cleared.
    world, clock, order = units_cancelled_by_a_function_that_dies(monkeypatch)
    units = world.actions._units
    real = world.orders.update_with_stock
    raced: list[bool] = []

    def another_cancel_first(*args: object) -> None:
        if not raced:
            raced.append(True)
            with monkeypatch.context() as patched:
                patched.setattr(units, "_stock_step", lambda read: None)  # the second one dies there
                world.actions.cancel(order.id, "two fewer", actor="key_web", lines={"L1": 1})
            assert world.level("MUG", "wh-west") == (5, 4, 1)
        real(*args)

    with monkeypatch.context() as patched:
        patched.setattr(world.orders, "update_with_stock", another_cancel_first)
        units.release_owed(world.order(order.id))

    assert raced and not world.order(order.id).stock_owed
    assert world.level("MUG", "wh-west") == (5, 2, 3)
    passes(world, clock)
    assert world.level("MUG", "wh-west") == (5, 2, 3)


def recording_writes(world: World, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Order, Order]]:
    """Every order write from now on, as (before, after): what the stream sees."""
    real = world.orders.update
    writes: list[tuple[Order, Order]] = []

    def update(order: Order, expected: Order, entries: list[HistoryEntry], **conditions) -> None:
        real(order, expected, entries, **conditions)
        writes.append((expected, order))

    monkeypatch.setattr(world.orders, "update", update)
    return writes


def refund_events(writes: list[tuple[Order, Order]], order_id: str) -> list[tuple[str, str]]:
    """The refund events (type, refund id) the stream derives from the writes of `order_id`."""
    return [
        (event.type.value, event.data["refund"]["id"])
        for before, after in writes if after.id == order_id
        for event in order_events(json.loads(before.stored_json()), json.loads(after.stored_json()))
        if "refund" in event.data
    ]  # fmt: skip


def replacement_left_below_its_credit(pickup: bool, *, below: bool = True) -> tuple[World, Clock, Order, Order, str]:
    """A TSHIRT exchanged for a TSHIRT and a CAP (shipped from the west and east), or for three
    TSHIRTs to collect at the SF store (`pickup`); units of the replacement are cancelled while its
    last parcel waits (pending, or ready at the store), leaving its total below the credit: the
    credit's rest is given back once that parcel has left. (world, clock, original, replacement,
    that parcel's id). Not `below`: nothing is cancelled, and it uses its whole credit."""
    clock = Clock(NOW + timedelta(days=3))
    world = build_world([*RETURNS_STOCK, ("TSHIRT", "store-sf", 10)], clock=clock)
    returns, _ = returns_for(world, clock)
    if pickup:
        original = world.allocated(("TSHIRT", 3), fulfillment={"type": "pickup", "location_id": "store-sf"})
        world.actions.ready(original.id, original.shipments[0].id, actor="key_store")
        world.actions.collect(original.id, original.shipments[0].id, actor="key_store")
        item = returns.request(original.id, exchange_of("L1", 3, ("TSHIRT", 3)), actor="key_cs")
        returns.receive(item.id, receipt("store-sf", ("L1", 3, "resellable")), "key_store")
    else:
        original = world.allocated(("TSHIRT", 1))
        for shipment in original.shipments:
            world.actions.ship(original.id, shipment.id, None, actor="key_wh")
        item = returns.request(original.id, exchange_of("L1", 1, ("TSHIRT", 1), ("CAP", 1)), actor="key_cs")
        returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    replacement = world.run(run_return_workflow(returns, item.id, actor="key_wh").exchange_order_id or "")
    if pickup:
        world.actions.ready(replacement.id, replacement.shipments[0].id, actor="key_store")
        if below:
            world.actions.cancel(replacement.id, "two fewer", actor="key_cs", lines={"L1": 2})
    elif below:
        world.actions.cancel(replacement.id, "just the cap", actor="key_cs", lines={"L1": 1})
    else:
        world.actions.ship(replacement.id, world.shipment_at(replacement, "wh-west"), None, actor="key_wh")
    left = world.order(replacement.id)
    (last,) = [s.id for s in left.shipments if s.status in NOT_LEFT]
    assert (left.totals.grand_total < (left.exchange_credit or left.totals.grand_total)) is below
    assert world.order(original.id).payment.refunds == []  # its total is not final until that parcel leaves
    return world, clock, world.order(original.id), left, last


@pytest.mark.parametrize("how", ["shipped untracked", "shipped then delivered", "collected"])
def test_a_replacements_credit_its_last_parcel_died_before_giving_back_is_given_back_by_the_reconciler(
    monkeypatch, how
):
    # Before: the last parcel's ship (or collect) wrote the order, then gave back on the original
    # the credit the replacement no longer used. A function that died between the two left
    # nothing asking for it but a repeat of that very ship or collect: a carrier that never reports
    # delivery, or a pickup (collected is delivered), and the customer's money stayed captured for good.
    world, clock, original, replacement, last = replacement_left_below_its_credit(pickup=how == "collected")
    if how == "collected":
        died = dies_after_recording(world, monkeypatch, OrderEvent.SHIPMENT_DELIVERED)
        with pytest.raises(Died):
            world.actions.collect(replacement.id, last, actor="key_store")
    else:
        died = dies_after_recording(world, monkeypatch, OrderEvent.SHIPMENT_SHIPPED)
        with pytest.raises(Died):
            world.actions.ship(replacement.id, last, None, actor="key_wh")
        if how == "shipped then delivered":  # the delivery's function dies after its write too
            monkeypatch.undo()
            died = dies_after_recording(world, monkeypatch, OrderEvent.SHIPMENT_DELIVERED)
            with pytest.raises(Died):
                world.actions.deliver(replacement.id, last, actor="key_carrier")
    monkeypatch.undo()
    assert died and world.order(original.id).payment.refunds == []
    writes = recording_writes(world, monkeypatch)

    passes(world, clock)
    passes(world, clock)

    credit, total = replacement.exchange_credit, world.order(replacement.id).totals.grand_total
    assert credit is not None
    given_back = [(credit - total, "succeeded", f"exchange {replacement.id} {CREDIT_NOT_USED}")]
    refunds = world.order(original.id).payment.refunds
    assert [(r.amount, r.status, r.reason) for r in refunds] == given_back  # once, however many passes
    if how == "collected":
        world.actions.collect(replacement.id, last, actor="key_store")  # a repeat gives nothing more
    else:
        world.actions.ship(replacement.id, last, None, actor="key_wh")
    passes(world, clock)
    refunds = world.order(original.id).payment.refunds
    assert [(r.amount, r.status, r.reason) for r in refunds] == given_back
    refunded = [e for e in world.history(original.id) if e.type is OrderEvent.PAYMENT_REFUNDED]
    assert len(refunded) == 1
    assert refund_events(writes, original.id) == [("refund.succeeded", refunds[0].id)]
    assert refund_events(writes, replacement.id) == []
    item = world.returns.get(replacement.exchange_of or "")
    assert item is not None and item.refund == credit - total  # the exchange's return shows it
    after = world.order(replacement.id)
    assert not after.settlement_owed and index_attributes(after).get("refund_key") is None


@pytest.mark.parametrize("pickup", [False, True])
@pytest.mark.parametrize("below", [True, False])
def test_a_replacements_last_parcel_records_its_give_back_owed_only_when_it_gives_some_back(monkeypatch, pickup, below):
    # With the write that ends it, cleared once given. A replacement that uses its whole credit,
    # and the typical order, write nothing more.
    def hand_over(order: Order, shipment_id: str) -> None:
        if pickup:
            world.actions.collect(order.id, shipment_id, actor="key_store")
        else:
            world.actions.ship(order.id, shipment_id, None, actor="key_wh")

    world, _, original, replacement, last = replacement_left_below_its_credit(pickup, below=below)
    writes = recording_writes(world, monkeypatch)
    hand_over(replacement, last)
    owed = [after.settlement_owed for _, after in writes if after.id == replacement.id]
    if below:
        assert (owed[0], owed[-1]) == (True, False)  # with the parcel, then cleared once given
        assert [r.status for r in world.order(original.id).payment.refunds] == ["succeeded"]
        return
    assert owed and not any(owed)
    assert world.order(original.id).payment.refunds == []
    typical = world.allocated(("TSHIRT", 1), **({"fulfillment": {"type": "pickup", "location_id": "store-sf"}}
                                                 if pickup else {}))  # fmt: skip
    for shipment in typical.shipments:
        if pickup:
            world.actions.ready(typical.id, shipment.id, actor="key_store")
        hand_over(typical, shipment.id)
    assert typical.id in {after.id for _, after in writes}
    assert not any(after.settlement_owed for _, after in writes)


def test_a_cancelled_replacements_credit_its_cancel_died_before_giving_back_is_given_back_by_the_outbox(monkeypatch):
    # The cancel of a whole replacement is written first, then its credit is given back: a
    # function that dies between them leaves the cancel's stream record, whose execution finishes
    # the clean-up (functions/outbox: CancelRecorded), the give-back with it, once.
    world, _, original, replacement, _ = replacement_left_below_its_credit(pickup=False)
    died = dies_after_recording(world, monkeypatch, OrderEvent.CANCELLED)
    with pytest.raises(Died):
        world.actions.cancel(replacement.id, "not wanted", actor="key_cs")
    monkeypatch.undo()
    assert died and world.order(original.id).payment.refunds == []

    for _ in range(2):
        world.workflow.cancel_after_failure(replacement.id, CANCEL_RECORDED, "")

    credit = replacement.exchange_credit
    refunds = world.order(original.id).payment.refunds
    assert [(r.amount, r.status) for r in refunds] == [(credit, "succeeded")]


# --- What the kept-back pass reports of what it finished ---------------------------------------------


def test_the_pass_names_the_units_it_released_for_a_cancel_that_died(monkeypatch):
    # Before: the pass released the units and cleared the record, and said nothing of it: no
    # log, no metric, nothing in what it returned (only refunds were named).
    world, clock, order = units_cancelled_by_a_function_that_dies(monkeypatch)
    clock.now += timedelta(minutes=20)

    done = kept_back_sweep(world, clock).run(ACTOR)

    assert world.level("MUG", "wh-west") == (5, 3, 2)
    assert done.stock_released == [order.id]
    assert (done.owed_back_settled, done.refunded, done.owed_back_refunded) == ([], [], [])
    clock.now += timedelta(minutes=20)
    again = kept_back_sweep(world, clock).run(ACTOR)
    assert again.stock_released == []  # once


def test_the_pass_names_the_give_back_it_finished_for_a_cancel_that_died(monkeypatch):
    # The give-back is refunded on the original order: nothing on the replacement's own refunds
    # said the pass had given it; it names the order whose owed settlement it finished.
    world, clock, _, replacement = replacement_whose_rest_is_cancelled(monkeypatch, OrderEvent.UNITS_CANCELLED)
    clock.now += timedelta(minutes=20)

    done = kept_back_sweep(world, clock).run(ACTOR)

    assert not world.order(replacement.id).settlement_owed
    assert done.owed_back_settled == [replacement.id]
    clock.now += timedelta(minutes=20)
    assert kept_back_sweep(world, clock).run(ACTOR).owed_back_settled == []


# --- A cancel of the last units to ship that died before settling the payment ------------------------


def rest_cancelled_by_a_function_that_dies(
    monkeypatch: pytest.MonkeyPatch, *, delivered: bool
) -> tuple[World, Clock, Order]:
    """2 MUGs (wh-west's parcel) ship, and are delivered or not; the 3 CAPs (wh-east's) are
    cancelled, and the cancel's function dies right after its write: the order, which has nothing
    left to ship, is short of its total by the shipping the CAPs' parcel was to pay, and its
    authorization still holds the CAPs' worth."""
    clock = Clock()
    world = build_world(CANCEL_STOCK, clock=clock)
    order = world.allocated(("MUG", 2), ("CAP", 3))
    west = world.shipment_at(order, "wh-west")
    world.actions.ship(order.id, west, None, actor="key_wh")
    if delivered:
        world.actions.deliver(order.id, west, actor="key_carrier")
    died = dies_after_recording(world, monkeypatch, OrderEvent.UNITS_CANCELLED)
    with pytest.raises(Died):
        world.actions.cancel(order.id, "rest", actor="key_web")
    monkeypatch.undo()
    cancelled = world.order(order.id)
    assert died and cancelled.payment.captured < cancelled.totals.grand_total < cancelled.payment.authorized
    return world, clock, order


@pytest.mark.parametrize("delivered", [True, False], ids=["delivered", "never reported delivered"])
def test_a_cancel_of_the_last_units_that_died_before_settling_is_settled_by_the_reconciler_once(monkeypatch, delivered):
    # Before: for any order, not only a replacement, the cancel's write recorded nothing owed
    # (nothing was captured beyond the new total), and only its function captured what the
    # captures fell short of and released the rest of the authorization. Dead, it left a
    # delivered order closed short of its total (the shop's loss) and the customer's card holding
    # the cancelled units' worth until the authorization lapsed; nothing ships or is delivered to
    # do it (a carrier that never reports delivery: the same).
    world, clock, order = rest_cancelled_by_a_function_that_dies(monkeypatch, delivered=delivered)
    assert world.order(order.id).settlement_owed
    assert index_attributes(world.order(order.id))["refund_key"] == {"S": KEPT_BACK_KEY}

    # Out of the pass's index after (in the carrier work's: the emptied parcel's booking, died with it too).
    settled_once_by_the_passes(world, clock, order)


def test_a_release_the_gateway_refuses_after_such_a_cancel_is_not_asked_for_by_every_pass(monkeypatch):
    # One the gateway refuses (an authorization it let lapse) is in the history, as a delivery
    # leaves it: the record is cleared rather than the release asked for every pass for good.
    world, clock, order = rest_cancelled_by_a_function_that_dies(monkeypatch, delivered=True)
    world.gateway.script("void", "refuse")

    passes(world, clock)

    after = world.order(order.id)
    assert after.payment.captured == after.totals.grand_total  # the shortfall captured all the same
    # Out of the pass's index (in the carrier work's: the emptied parcel's booking, died with it too).
    assert not after.settlement_owed and index_attributes(after).get("refund_key") != {"S": KEPT_BACK_KEY}
    voids = [call for call in world.gateway.calls if call[0] == "void"]
    passes(world, clock)
    assert [call for call in world.gateway.calls if call[0] == "void"] == voids
