"""The unsettled authorization sweep: an authorization an edit left on an order nobody changes again
(asked for and never recorded, or replaced and never voided) is voided by the reconciler once the
PATCH that left it is surely over, recorded only as the gateway answered; a young one is left to its
PATCH, and a refused void is not asked again every pass."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from core import payment_keys
from core.authorization_sweep import Settled, SettleIncomplete, UnsettledAuthorizationSweep
from core.cancellation import Cancellation
from core.errors import Conflict, InvalidTransition, OrderClosed, PaymentDeclined, StaleVersion, TransientError
from core.events import OrderEvent
from core.models import LineInput, Order, OrderEdit
from core.order_changes import outage_noted_once
from core.ports import UnsettledAuthorizations
from core.status import OrderStatus, PaymentStatus
from plugins.test_payments import AUTHORIZATION, reference
from tests.unit.test_payment_truth import Removed
from tests.unit.test_workflow import AnswerLost, CancelledMeanwhile, LookupDown, NoLookup
from tests.unit.world import (
    Clock,
    Died,
    World,
    a_ship_that_died,
    before_the_next_write,
    build_world,
    dies_before_recording,
    history_reads,
)

STOCK = [("TSHIRT", "wh-west", 20)]
ACTOR = "reconciler"
FIVE = OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=5)])


class InMemoryUnsettledAuthorizations(UnsettledAuthorizations):
    def __init__(self, world: World) -> None:
        self._world = world
        self._aside: dict[str, tuple[int, int]] = {}  # set aside at (version, entries), until the next write

    def left_since_before(self, before: datetime) -> Iterator[str]:
        left = [
            o for o in self._world.orders.orders.values()
            if o.authorizations_left and o.last_changed < before and not self._set_aside(o)
        ]  # fmt: skip
        return iter(o.id for o in sorted(left, key=lambda o: o.last_changed))

    def set_aside(self, order: Order) -> None:
        stored = self._world.orders.orders.get(order.id)
        if stored is not None and stored.version == order.version:
            self._aside[order.id] = (order.version, len(self._world.history(order.id)))

    def _set_aside(self, order: Order) -> bool:
        return self._aside.get(order.id) == (order.version, len(self._world.history(order.id)))


def sweep(
    world: World, clock: Clock, index: UnsettledAuthorizations | None = None, **limits: int
) -> UnsettledAuthorizationSweep:
    payments = world.actions._payments
    cancellation = Cancellation(
        world.orders, world.catalog, world.inventory, payments, clock, void_failures=outage_noted_once
    )
    return UnsettledAuthorizationSweep(
        index or InMemoryUnsettledAuthorizations(world), world.orders, cancellation, clock,
        after=timedelta(minutes=15), **limits,
    )  # fmt: skip


def authorized(world: World) -> Order:
    order_id = world.place(("TSHIRT", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    return world.order(order_id)


def edit_died(world: World, monkeypatch: pytest.MonkeyPatch) -> tuple[Order, str]:
    """An authorized order whose PATCH to a grown total died after the gateway authorized it: the
    order as it was, and the authorization the gateway made."""
    order = authorized(world)
    dies_before_recording(world, monkeypatch, "edited")
    with pytest.raises(Died):
        world.actions.edit(order.id, order.version, FIVE, "key_web")
    monkeypatch.undo()
    (made,) = [a for a in world.spy.authorized if a != order.payment.authorization]
    return order, made


def voids(world: World, order_id: str) -> list[tuple[str, str, str]]:
    return [
        (entry.actor, entry.detail["authorization"], entry.detail["reason"])
        for entry in world.history(order_id)
        if entry.type is OrderEvent.PAYMENT_VOIDED
    ]


def void_failures(world: World, order_id: str) -> list[tuple[str, str]]:
    return [
        (entry.actor, entry.detail["kind"])
        for entry in world.history(order_id)
        if entry.type is OrderEvent.PAYMENT_VOID_FAILED
    ]


def test_the_authorization_of_an_edit_that_died_is_voided_once_its_patch_is_surely_over(world, clock, monkeypatch):
    order, made = edit_died(world, monkeypatch)
    clock.advance(minutes=14)
    assert sweep(world, clock).run(ACTOR).orders == []  # its PATCH may still record it
    assert world.spy.voided == [] and world.order(order.id).authorization_requested is not None

    clock.advance(minutes=2)
    assert sweep(world, clock).run(ACTOR) == Settled([order.id], edits=[order.id])

    after = world.order(order.id)
    assert world.spy.voided == [made]
    assert voids(world, order.id) == [(ACTOR, made, "asked for by an edit that did not record it")]
    assert after.authorization_requested is None and not after.edit_authorizations_left
    assert (after.lines, after.totals, after.payment) == (order.lines, order.totals, order.payment)
    assert sweep(world, clock).run(ACTOR).orders == [] and world.spy.voided == [made]


def test_a_patch_repeated_before_the_threshold_still_records_its_authorization(world, clock, monkeypatch):
    order, made = edit_died(world, monkeypatch)
    clock.advance(minutes=5)
    sweep(world, clock).run(ACTOR)

    edited = world.actions.edit(order.id, order.version, FIVE, "key_web")

    assert edited.payment.authorization == made and world.spy.voided == [order.payment.authorization]


def test_an_authorization_an_edit_replaced_and_could_not_void_is_voided_by_the_pass(world, clock):
    order = authorized(world)
    world.gateway.script("void", "transient", "transient", "transient", "approve")
    edited = world.actions.edit(order.id, order.version, FIVE, "key_web")  # 200: the old one still holds
    assert edited.replaced_authorizations == [order.payment.authorization] and world.spy.voided == []
    clock.advance(minutes=16)

    assert sweep(world, clock).run(ACTOR).orders == [order.id]

    after = world.order(order.id)
    assert world.spy.voided == [order.payment.authorization]
    assert after.replaced_authorizations == [] and after.payment == edited.payment
    assert voids(world, order.id) == [
        (ACTOR, order.payment.authorization, "replaced by the authorization of the edited total")
    ]


def test_a_declined_edits_request_is_settled_without_a_void(world, clock):
    order = authorized(world)
    world.gateway.script("authorize", "refuse")
    with pytest.raises(Conflict):
        world.actions.edit(order.id, order.version, FIVE, "key_web")
    clock.advance(minutes=16)

    assert sweep(world, clock).run(ACTOR).orders == [order.id]  # asked again, declined again: none was made

    after = world.order(order.id)
    assert after.authorization_requested is None and world.spy.voided == []
    assert after.payment == order.payment and voids(world, order.id) == []


def test_a_gateway_found_down_is_not_asked_again_in_the_pass_and_the_next_pass_settles(world, clock):
    orders = [authorized(world) for _ in range(2)]
    world.gateway.script("void", "transient")
    for order in orders:
        world.actions.edit(order.id, order.version, FIVE, "key_web")
    clock.advance(minutes=16)
    asked = len(world.gateway.keys("void"))

    assert sweep(world, clock).run(ACTOR).orders == []

    assert len(world.gateway.keys("void")) == asked + 3  # one order's attempts, not every order's
    assert [world.order(o.id).replaced_authorizations for o in orders] == [[o.payment.authorization] for o in orders]
    world.gateway.script("void", "approve")
    assert sweep(world, clock).run(ACTOR).orders == [o.id for o in orders]
    assert world.spy.voided == [o.payment.authorization for o in orders]


def test_a_refused_void_is_reported_once_then_left_for_the_orders_next_change(world, clock):
    order = authorized(world)
    world.gateway.script("void", "transient", "transient", "transient", "refuse")
    world.actions.edit(order.id, order.version, FIVE, "key_web")
    clock.advance(minutes=16)

    with pytest.raises(SettleIncomplete) as incomplete:
        sweep(world, clock).run(ACTOR)

    assert list(incomplete.value.failed) == [order.id] and incomplete.value.settled.orders == []
    refused = void_failures(world, order.id)
    assert refused[-1] == (ACTOR, "refused")
    for _ in range(3):
        clock.advance(minutes=5)
        assert sweep(world, clock).run(ACTOR).orders == []
    assert void_failures(world, order.id) == refused
    assert world.order(order.id).replaced_authorizations == [order.payment.authorization]
    world.gateway.script("void", "approve")
    cancelled = world.actions.cancel(order.id, "changed my mind", actor="key_web")  # the next change asks again
    assert cancelled.replaced_authorizations == [] and cancelled.payment.status is PaymentStatus.VOIDED


def test_orders_whose_void_was_refused_are_set_aside_so_they_never_crowd_out_the_orders_behind_them(
    world, clock, monkeypatch
):  # fmt: skip
    # A refused void is not asked again until its order changes, and a shipped order may never
    # change again: such orders stayed in the index for good, each pass read them all again (up to
    # its 1,000 reads) and, once there were that many, never reached an order behind them.
    world.gateway.script("void", "refuse")
    refused = []
    for _ in range(3):
        order = authorized(world)
        world.actions.edit(order.id, order.version, FIVE, "key_web")  # its old authorization's void refused
        refused.append(order.id)
        clock.advance(minutes=1)
    behind = authorized(world)
    world.gateway.script("void", "transient", "transient", "transient", "approve")
    world.actions.edit(behind.id, behind.version, FIVE, "key_web")  # the gateway down: left for the pass
    clock.advance(minutes=16)
    index = InMemoryUnsettledAuthorizations(world)
    reads = history_reads(world, monkeypatch)

    assert sweep(world, clock, index, max_reads=2).run(ACTOR).orders == []
    assert sweep(world, clock, index, max_reads=2).run(ACTOR).orders == [behind.id]

    assert world.spy.voided == [behind.payment.authorization]
    assert [r for r in reads if r in refused] == refused  # each read once, then out of the index
    assert list(index.left_since_before(clock())) == []
    world.gateway.script("void", "approve")
    world.actions.cancel(refused[0], "changed my mind", actor="key_web")  # its next change asks again
    assert world.order(refused[0]).replaced_authorizations == []


def test_passes_through_a_long_outage_add_nothing_the_history_already_says_then_void(world, clock):
    order = authorized(world)
    world.gateway.script("void", "transient")
    world.actions.edit(order.id, order.version, FIVE, "key_web")
    said = void_failures(world, order.id)
    assert said == [("key_web", "transient")] * 3

    for _ in range(12):  # an hour of passes, every five minutes, the gateway still down
        clock.advance(minutes=5)
        assert sweep(world, clock).run(ACTOR).orders == []

    assert void_failures(world, order.id) == said
    world.gateway.script("void", "approve")
    assert sweep(world, clock).run(ACTOR).orders == [order.id]
    assert world.spy.voided == [order.payment.authorization]


def test_an_outage_the_history_does_not_show_yet_is_recorded_once(world, clock, monkeypatch):
    order, made = edit_died(world, monkeypatch)
    world.gateway.script("void", "transient")

    for _ in range(12):
        clock.advance(minutes=5)
        assert sweep(world, clock).run(ACTOR).orders == []

    assert void_failures(world, order.id) == [(ACTOR, "transient")]
    world.gateway.script("void", "approve")
    clock.advance(minutes=16)
    assert sweep(world, clock).run(ACTOR).orders == [order.id]
    assert world.spy.voided == [made] and world.order(order.id).authorization_requested is None


class Lagging(UnsettledAuthorizations):
    """An index that lists what it listed when it was last read (a GSI lags the table)."""

    def __init__(self, order_ids: list[str]) -> None:
        self._order_ids = order_ids

    def left_since_before(self, before: datetime) -> Iterator[str]:
        return iter(self._order_ids)

    def set_aside(self, order: Order) -> None:
        pass


def edited_while_the_void_fails(world: World) -> Order:
    """An authorized order (as it was) whose edit to a grown total could not void its old authorization."""
    order = authorized(world)
    world.gateway.script("void", "transient")
    world.actions.edit(order.id, order.version, FIVE, "key_web")
    return order


@pytest.mark.parametrize(
    ("answers", "reported"),
    [(["approve"], "settled"), (["refuse", "approve"], "failed"), (["transient"] * 3 + ["approve"], "none")],
    ids=["settled", "refused", "gateway down"],
)
def test_a_pass_asks_no_more_than_its_limit_of_orders_however_the_gateway_answered_and_the_next_passes_go_on(
    world, clock, monkeypatch, answers: list[str], reported: str
):
    # `limit` bounds how much of the gateway (and of the invocation's time) a pass spends: an order
    # settled, one whose void was refused and one whose gateway was down are each one asked.
    orders = []
    for _ in range(2):
        orders.append(edited_while_the_void_fails(world))
        clock.advance(minutes=1)
    clock.advance(minutes=16)
    world.gateway.script("void", *answers)
    reads = history_reads(world, monkeypatch)

    try:
        settled, failed = sweep(world, clock, limit=1).run(ACTOR).orders, []
    except SettleIncomplete as incomplete:
        settled, failed = incomplete.settled.orders, list(incomplete.failed)

    first, second = (o.id for o in orders)
    assert {"settled": ([first], []), "failed": ([], [first]), "none": ([], [])}[reported] == (settled, failed)
    assert second not in reads and world.order(second).replaced_authorizations == [orders[1].payment.authorization]
    for _ in range(2):
        sweep(world, clock, limit=1).run(ACTOR)
    assert world.order(second).replaced_authorizations == [] and orders[1].payment.authorization in world.spy.voided


def test_orders_a_lagging_index_still_lists_that_settled_or_changed_since_are_left_and_the_one_behind_settled(
    world, clock
):
    # The index lags the table: it may list an order settled since (nothing to ask), or one changed
    # again since the time it lists (its PATCH may still record what it asked for). Neither is asked,
    # nor counts against the pass's limit; nor is one last changed no more than `after` ago.
    settled_since = edited_while_the_void_fails(world)
    world.gateway.script("void", "approve")
    grown = world.order(settled_since.id)
    world.actions.edit(grown.id, grown.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=3)]), "key_web")
    assert not world.order(settled_since.id).authorizations_left
    waiting = edited_while_the_void_fails(world)
    clock.advance(minutes=5)
    fifteen_minutes_ago = edited_while_the_void_fails(world)
    clock.advance(minutes=15)
    just_now = edited_while_the_void_fails(world)
    world.gateway.script("void", "approve")
    voided = list(world.spy.voided)
    index = Lagging([o.id for o in (settled_since, fifteen_minutes_ago, just_now, waiting)])

    assert sweep(world, clock, index, limit=1).run(ACTOR) == Settled([waiting.id], edits=[waiting.id])

    assert world.spy.voided == [*voided, waiting.payment.authorization]
    for order in (fifteen_minutes_ago, just_now):
        assert world.order(order.id).replaced_authorizations == [order.payment.authorization]


def test_a_refused_void_asked_again_by_the_orders_next_change_is_asked_by_the_pass_once_that_fails_too(world, clock):
    # A refusal leaves the order to its next change; once that change has asked again (the gateway
    # down this time), the refusal before it no longer holds the pass back.
    order = authorized(world)
    world.gateway.script("void", "refuse")
    edited = world.actions.edit(order.id, order.version, FIVE, "key_web")
    assert void_failures(world, order.id) == [("key_web", "refused")]
    clock.advance(minutes=1)
    world.gateway.script("void", "transient")
    again = world.actions.edit(
        edited.id, edited.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=3)]), "key_web"
    )
    assert again.replaced_authorizations == [order.payment.authorization]  # asked again, the gateway down
    world.gateway.script("void", "approve")
    clock.advance(minutes=16)

    assert sweep(world, clock).run(ACTOR).orders == [order.id]

    assert world.spy.voided == [order.payment.authorization]
    assert world.order(order.id).replaced_authorizations == []


def test_a_replaced_authorization_no_payment_plugin_takes_is_reported_once_then_left_for_the_orders_next_change(clock):
    removed = Removed()
    world = build_world(STOCK, removed, clock=clock)
    order = edited_while_the_void_fails(world)
    world.gateway.script("void", "approve")
    removed.gone = True
    clock.advance(minutes=16)

    with pytest.raises(SettleIncomplete):
        sweep(world, clock).run(ACTOR)

    said = world.history(order.id)
    assert void_failures(world, order.id)[-1] == (ACTOR, "no_plugin")
    for _ in range(3):
        clock.advance(minutes=5)
        assert sweep(world, clock).run(ACTOR).orders == []
    assert world.history(order.id) == said  # asked every pass, it would only grow the history


class Counted(InMemoryUnsettledAuthorizations):
    """The index, counting the orders a pass read of it (each page of it a DynamoDB read)."""

    read = 0

    def left_since_before(self, before: datetime) -> Iterator[str]:
        for order_id in super().left_since_before(before):
            self.read += 1
            yield order_id


def test_once_its_time_is_up_a_pass_reads_no_more_of_its_index_and_the_next_pass_settles_the_rest(world, clock):
    orders = []
    for _ in range(3):
        orders.append(edited_while_the_void_fails(world))
        clock.advance(minutes=1)
    world.gateway.script("void", "approve")
    clock.advance(minutes=16)
    index = Counted(world)

    done = sweep(world, clock, index).run(ACTOR, time_up=lambda: len(world.spy.voided) > 0)

    assert done.orders == [orders[0].id] and index.read == 2  # the second read, the time found up
    assert sweep(world, clock).run(ACTOR).orders == [o.id for o in orders[1:]]


def given_up_while_down(clock: Clock, *plugins: object) -> tuple[World, str, list[str]]:
    """An order whose first authorization's answer was lost (the gateway authorized), edited while
    pending (its next authorization keyed anew), the gateway unable to look the old key up through
    the edit and the next authorization, which is approved: the world, the order, and what the
    gateway holds under the key the order gave up."""
    lost = AnswerLost()
    world = build_world(STOCK, lost, LookupDown(times=6), *plugins, clock=clock)
    order_id = world.place(("TSHIRT", 2))
    with pytest.raises(TransientError):
        world.workflow.authorize_payment(order_id, attempt=0)
    placed = world.order(order_id)
    world.actions.edit(order_id, placed.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=3)]), "key_ops")
    world.workflow.authorize_payment(order_id, attempt=1)
    return world, order_id, lost.made


def test_a_key_the_order_gave_up_and_could_not_release_before_it_was_authorized_is_voided_by_the_pass(clock):
    from functions.adapters.dynamodb import index_attributes

    world, order_id, made = given_up_while_down(clock)
    authorized = world.order(order_id)
    assert authorized.status is OrderStatus.AUTHORIZED and authorized.payment.authorization not in made
    assert world.spy.voided == [] and authorized.authorization_keys_given_up == [payment_keys.authorize(order_id, 1)]
    assert index_attributes(authorized)["refund_key"] == {"S": "void"}  # in the sweep's partition
    assert Order.model_validate_json(authorized.stored_json()) == authorized
    clock.advance(minutes=16)

    assert sweep(world, clock).run(ACTOR).orders == [order_id]

    after = world.order(order_id)
    assert world.spy.voided == made
    assert not after.edit_authorizations_left and after.payment == authorized.payment
    voided = [h for h in world.history(order_id) if h.type is OrderEvent.PAYMENT_VOIDED]
    assert [(h.actor, h.detail["authorization_key"]) for h in voided] == [(ACTOR, payment_keys.authorize(order_id, 1))]
    assert sweep(world, clock).run(ACTOR).orders == [] and world.spy.voided == made


def test_a_cancel_of_the_authorized_order_releases_the_keys_it_gave_up_too(clock):
    world, order_id, made = given_up_while_down(clock)
    own = world.order(order_id).payment.authorization

    cancelled = world.actions.cancel(order_id, "changed my mind", actor="key_web")

    assert cancelled.payment.status is PaymentStatus.VOIDED and not cancelled.edit_authorizations_left
    assert sorted(world.spy.voided) == sorted([*made, own])


def test_an_order_that_released_what_it_gave_up_before_its_authorization_is_left_out_of_the_partition(clock):
    # The typical edited order: the gateway answered, nothing is left to the sweep, and the
    # authorization's write carries nothing more (no entry in the index).
    from functions.adapters.dynamodb import index_attributes

    lost = AnswerLost()
    world = build_world(STOCK, lost, clock=clock)
    order_id = world.place(("TSHIRT", 2))
    with pytest.raises(TransientError):
        world.workflow.authorize_payment(order_id, attempt=0)
    placed = world.order(order_id)
    world.actions.edit(order_id, placed.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=3)]), "key_ops")
    world.workflow.authorize_payment(order_id, attempt=1)

    authorized = world.order(order_id)
    assert world.spy.voided == lost.made and not authorized.edit_authorizations_left
    assert "refund_key" not in index_attributes(authorized)
    assert "authorization_keys_given_up" not in authorized.stored_json()


def test_a_given_up_key_no_payment_plugin_takes_is_reported_once_then_left_for_the_orders_next_change(clock):
    removed = Removed()
    world, order_id, made = given_up_while_down(clock, removed)
    removed.gone = True
    clock.advance(minutes=16)

    with pytest.raises(SettleIncomplete) as incomplete:
        sweep(world, clock).run(ACTOR)

    assert list(incomplete.value.failed) == [order_id]
    said = world.history(order_id)
    for _ in range(3):
        clock.advance(minutes=5)
        assert sweep(world, clock).run(ACTOR).orders == []
    assert world.history(order_id) == said  # asked every pass, it would only grow the history
    removed.gone = False
    cancelled = world.actions.cancel(order_id, "changed my mind", actor="key_web")  # the next change asks again
    assert not cancelled.edit_authorizations_left and made[0] in world.spy.voided


def test_a_cancelled_orders_own_authorization_the_gateway_could_not_void_is_voided_by_the_pass(world, clock):
    # The cancel answers 200 with the payment still authorized; its execution's retries run out.
    order = authorized(world)
    world.gateway.script("void", "transient")
    cancelled = world.actions.cancel(order.id, "changed my mind", actor="key_web")
    assert cancelled.payment.status is PaymentStatus.AUTHORIZED and world.spy.voided == []
    clock.advance(minutes=14)
    assert sweep(world, clock).run(ACTOR).orders == []  # not asked while it is young
    assert void_failures(world, order.id) == [("key_web", "transient")] * 3

    world.gateway.script("void", "approve")
    clock.advance(minutes=2)
    assert sweep(world, clock).run(ACTOR) == Settled([order.id], own=[order.id])  # no edit left anything

    after = world.order(order.id)
    assert after.payment.status is PaymentStatus.VOIDED and world.spy.voided == [order.payment.authorization]
    assert not after.authorizations_left
    [voided] = [h for h in world.history(order.id) if h.type is OrderEvent.PAYMENT_VOIDED]
    assert (voided.actor, voided.detail["authorization"]) == (ACTOR, order.payment.authorization)
    assert sweep(world, clock).run(ACTOR).orders == [] and world.spy.voided == [order.payment.authorization]


def test_a_cancel_whose_void_is_made_at_once_or_refused_leaves_nothing_for_the_pass(world, clock):
    voided, refused = authorized(world), authorized(world)
    world.actions.cancel(voided.id, "changed my mind", actor="key_web")
    world.gateway.script("void", "transient", "refuse")
    world.actions.cancel(refused.id, "changed my mind", actor="key_web")  # the refusal: for a person
    assert void_failures(world, refused.id) == [("key_web", "transient"), ("key_web", "refused")]
    clock.advance(minutes=16)

    assert sweep(world, clock).run(ACTOR).orders == []

    assert not world.order(voided.id).authorizations_left and not world.order(refused.id).authorizations_left
    assert "own_void_owed" not in world.order(voided.id).stored_json()
    assert world.order(refused.id).payment.status is PaymentStatus.AUTHORIZED


@pytest.mark.parametrize("down", ["capture", "refund"])
def test_a_cancel_that_could_not_give_back_a_dead_ships_capture_is_settled_and_voided_by_the_pass(
    world, clock, monkeypatch, down
):
    # The capture is given back before the void is asked: with the gateway down for that, the cancel
    # never got to the void, and the customer was charged and held with nothing to ask again.
    order, shipment_id = a_ship_that_died(world, monkeypatch)
    world.gateway.script(down, "transient")
    cancelled = world.actions.cancel(order.id, "changed my mind", actor="key_web")
    assert cancelled.payment.status is PaymentStatus.AUTHORIZED and cancelled.captures_requested
    assert world.spy.voided == [] and world.spy.refunded == []

    world.gateway.script(down, "approve")
    clock.advance(minutes=16)
    assert sweep(world, clock).run(ACTOR).orders == [order.id]

    after = world.order(order.id)
    assert after.captures_requested == [] and after.payment.status is PaymentStatus.VOIDED
    assert [(amount, key) for _, amount, key in world.spy.refunded] == [
        (order.totals.grand_total, payment_keys.capture_reversal(order.id, shipment_id))
    ]
    assert world.spy.voided == [order.payment.authorization] and not after.authorizations_left


def test_a_cancel_that_could_not_look_up_an_authorization_whose_answer_was_lost_is_finished_by_the_pass(clock):
    # Cancelled while pending, the gateway down: the authorization it may have made under the
    # order's key was never looked up, and after the cancel's execution nothing asked again.
    lost = AnswerLost()
    world = build_world(STOCK, lost, LookupDown(times=3), clock=clock)
    order_id = world.place(("TSHIRT", 2))
    with pytest.raises(TransientError):
        world.workflow.authorize_payment(order_id, attempt=0)
    cancelled = world.actions.cancel(order_id, "changed my mind", actor="key_web")
    assert cancelled.payment.status is PaymentStatus.PENDING and world.spy.voided == []
    assert void_failures(world, order_id) == [("key_web", "transient")] * 3
    clock.advance(minutes=16)

    assert sweep(world, clock).run(ACTOR).orders == [order_id]

    assert world.spy.voided == lost.made and not world.order(order_id).authorizations_left
    [voided] = [h for h in world.history(order_id) if h.type is OrderEvent.PAYMENT_VOIDED]
    assert (voided.actor, voided.detail["authorization_key"]) == (ACTOR, payment_keys.authorize(order_id, 1))
    assert sweep(world, clock).run(ACTOR).orders == [] and world.spy.voided == lost.made


def test_a_pending_cancel_that_looked_up_its_key_at_once_leaves_nothing_for_the_pass(clock):
    world = build_world(STOCK, clock=clock)
    world.gateway.script("authorize", "timeout", "approve")
    order_id = world.place(("TSHIRT", 2))
    with pytest.raises(TransientError):
        world.workflow.authorize_payment(order_id, attempt=0)
    world.actions.cancel(order_id, "changed my mind", actor="key_web")
    clock.advance(minutes=16)

    assert not world.order(order_id).authorizations_left and sweep(world, clock).run(ACTOR).orders == []


def test_a_cancelled_orders_own_void_is_made_by_the_pass_whatever_the_gateway_says_of_a_replaced_one(world, clock):
    order = authorized(world)
    world.gateway.script("void", *["transient"] * 3, "refuse", *["transient"] * 3, "approve")
    edited = world.actions.edit(order.id, order.version, FIVE, "key_web")  # the replaced one stays held
    cancelled = world.actions.cancel(order.id, "changed my mind", actor="key_web")  # refused, then down
    assert cancelled.payment.status is PaymentStatus.AUTHORIZED and world.spy.voided == []
    clock.advance(minutes=16)

    assert sweep(world, clock).run(ACTOR).orders == []  # the replaced one, refused, waits for a person

    after = world.order(order.id)
    assert after.payment.status is PaymentStatus.VOIDED and world.spy.voided == [edited.payment.authorization]
    assert after.replaced_authorizations == [order.payment.authorization]


def test_a_payment_failed_order_whose_lost_authorization_could_not_be_looked_up_is_released_by_the_pass(clock):
    # Its first answer lost, edited while pending, the edited total declined: FailPayment asks what
    # the gateway holds under the first key, the gateway down through its retries (and the edit's,
    # and the authorization's). Nothing else will ever settle the payment_failed order.
    lost = AnswerLost()
    world = build_world(STOCK, lost, LookupDown(times=9), clock=clock)
    order_id = world.place(("TSHIRT", 2))
    with pytest.raises(TransientError):
        world.workflow.authorize_payment(order_id, attempt=0)
    placed = world.order(order_id)
    world.actions.edit(order_id, placed.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=3)]), "key_ops")
    world.gateway.script("authorize", "refuse")
    with pytest.raises(PaymentDeclined):
        world.workflow.authorize_payment(order_id, attempt=1)
    with pytest.raises(TransientError):
        world.workflow.fail_payment(order_id, error="PaymentDeclined", cause="declined")
    assert world.order(order_id).status is OrderStatus.PAYMENT_FAILED and world.spy.voided == []
    clock.advance(minutes=16)

    assert sweep(world, clock).run(ACTOR).orders == [order_id]

    assert world.spy.voided == lost.made and not world.order(order_id).authorizations_left
    [voided] = [h for h in world.history(order_id) if h.type is OrderEvent.PAYMENT_VOIDED]
    assert (voided.actor, voided.detail["authorization_key"]) == (ACTOR, payment_keys.authorize(order_id, 1))


def test_an_authorization_that_lost_its_write_to_a_cancel_and_could_not_be_voided_is_voided_by_the_pass(clock):
    # The cancel lands while the gateway call is on its way (its lookup finds nothing authorized
    # yet); the gateway approves, the write loses, and the void of what it made finds the gateway
    # down through its retries. Nothing else would ever ask again: the hold stayed on the card.
    meanwhile = CancelledMeanwhile()
    world = build_world(STOCK, meanwhile, clock=clock)
    order_id = world.place(("TSHIRT", 2))

    def cancel() -> None:
        world.actions.cancel(order_id, "changed my mind", "key_web")
        world.gateway.script("void", "transient")

    meanwhile.meanwhile = cancel
    with pytest.raises(OrderClosed):
        world.workflow.authorize_payment(order_id, attempt=0)
    assert len(world.spy.authorized) == 1 and world.spy.voided == []
    assert void_failures(world, order_id) == [("workflow", "transient")] * 3
    world.gateway.script("void", "approve")
    clock.advance(minutes=16)

    assert sweep(world, clock).run(ACTOR).orders == [order_id]

    assert world.spy.voided == world.spy.authorized and not world.order(order_id).authorizations_left
    assert sweep(world, clock).run(ACTOR).orders == [] and world.spy.voided == world.spy.authorized


def test_an_authorization_that_lost_its_write_to_a_cancel_and_was_voided_at_once_writes_nothing_more(clock):
    meanwhile = CancelledMeanwhile()
    world = build_world(STOCK, meanwhile, clock=clock)
    order_id = world.place(("TSHIRT", 2))
    meanwhile.meanwhile = lambda: world.actions.cancel(order_id, "changed my mind", "key_web")
    with pytest.raises(OrderClosed):
        world.workflow.authorize_payment(order_id, attempt=0)
    cancelled = world.order(order_id)
    clock.advance(minutes=16)

    assert world.spy.voided == world.spy.authorized and sweep(world, clock).run(ACTOR).orders == []
    assert world.order(order_id).version == cancelled.version and not cancelled.authorizations_left


@pytest.mark.parametrize("lookup", [True, False], ids=["with_lookup", "without_lookup"])
def test_an_edits_authorization_that_lost_its_write_to_a_cancel_and_could_not_be_voided_is_voided_by_the_pass(
    clock, monkeypatch, lookup
):
    # The cancel lands while the edit's new authorization is on its way: asked under the edit's
    # key, the gateway said nothing was made yet, so the cancel settled the edit's request without
    # a void. The edit's write then loses, and its own void of what the gateway made finds the
    # gateway down through its retries: nothing else would ever ask again. The void names what it
    # could not release, so a plugin that cannot look keys up voids it all the same.
    world = build_world(STOCK, clock=clock) if lookup else build_world(STOCK, NoLookup(), clock=clock)
    order = authorized(world)

    def cancel() -> None:
        world.gateway.script("authorize", "refuse")
        world.actions.cancel(order.id, "changed my mind", "key_web")
        world.gateway.script("authorize", "approve")
        world.gateway.script("void", "transient")

    before_the_next_write(world, monkeypatch, cancel, skip=1)  # the edit's request is written first
    with pytest.raises(StaleVersion):
        world.actions.edit(order.id, order.version, FIVE, "key_web")
    monkeypatch.undo()
    (made,) = [a for a in world.spy.authorized if a != order.payment.authorization]
    assert world.spy.voided == [order.payment.authorization]
    assert void_failures(world, order.id) == [("key_web", "transient")] * 3
    world.gateway.script("void", "approve")
    clock.advance(minutes=16)

    assert sweep(world, clock).run(ACTOR).orders == [order.id]

    assert world.spy.voided == [order.payment.authorization, made]
    assert not world.order(order.id).authorizations_left
    assert sweep(world, clock).run(ACTOR).orders == [] and world.spy.voided == [order.payment.authorization, made]


def test_a_renewal_an_edit_overtook_that_could_not_be_voided_is_voided_by_the_pass(clock, monkeypatch):
    world = build_world([("TSHIRT", "wh-east", 10)], clock=clock)
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    clock.advance(days=8)

    def edit() -> None:
        current = world.order(order.id)
        world.actions.edit(order.id, current.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=3)]), "key_cs")
        world.gateway.script("void", "transient")

    before_the_next_write(world, monkeypatch, edit, skip=1)  # after the renewal is requested
    # The edit sent the order back to be sourced: its shipment went, and the ship says so (409).
    with pytest.raises(InvalidTransition, match="was withdrawn"):
        world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")
    monkeypatch.undo()
    renewal = reference(AUTHORIZATION, payment_keys.renewal(order.id, order.payment.authorization))
    assert renewal in world.spy.authorized and renewal not in world.spy.voided
    world.gateway.script("void", "approve")
    clock.advance(minutes=16)

    assert sweep(world, clock).run(ACTOR).orders == [order.id]

    assert renewal in world.spy.voided and not world.order(order.id).authorizations_left
    assert world.order(order.id).payment.authorization not in world.spy.voided  # the edit's own is kept


def test_a_renewal_a_cancel_could_not_release_is_released_by_the_pass(clock, monkeypatch):
    # A ship died after the gateway renewed the order's authorization; the cancel then voided the
    # order's own but could not look the renewal's key up (the gateway down through its retries).
    # Nothing else would ever ask again: the renewal's hold stayed on the card.
    world = build_world([("TSHIRT", "wh-east", 10)], LookupDown(3), clock=clock)
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    clock.advance(days=8)
    dies_before_recording(world, monkeypatch, "payment_authorized")
    with pytest.raises(Died):
        world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")
    monkeypatch.undo()
    cancelled = world.actions.cancel(order.id, "customer_request", actor="key_cs")
    renewal = reference(AUTHORIZATION, payment_keys.renewal(order.id, order.payment.authorization))
    assert cancelled.payment.status is PaymentStatus.VOIDED and world.spy.voided == [order.payment.authorization]
    assert cancelled.renewing_authorization == order.payment.authorization
    clock.advance(minutes=16)

    assert sweep(world, clock).run(ACTOR) == Settled([order.id], own=[order.id])

    assert world.spy.voided == [order.payment.authorization, renewal]
    after = world.order(order.id)
    assert after.renewing_authorization is None and not after.authorizations_left
    assert sweep(world, clock).run(ACTOR).orders == []


def test_a_renewal_a_cancel_of_the_last_parcels_units_could_not_release_is_released_by_the_pass(clock, monkeypatch):
    # As above, but the order is partly shipped and the cancel is of the units its last parcel, whose
    # ship died mid-renewal, held: the order ends shipped, and nothing else asks about the renewal.
    world = build_world([("MUG", "wh-west", 3), ("CAP", "wh-east", 4)], LookupDown(3), clock=clock)
    order = world.allocated(("MUG", 1), ("CAP", 3))
    west, east = (world.shipment_at(order, loc) for loc in ("wh-west", "wh-east"))
    world.actions.ship(order.id, east, tracking_number=None, actor="key_wh_east")
    clock.advance(days=8)
    dies_before_recording(world, monkeypatch, "payment_authorized")
    with pytest.raises(Died):
        world.actions.ship(order.id, west, tracking_number=None, actor="key_wh_west")
    monkeypatch.undo()
    cancelled = world.actions.cancel(order.id, "customer_request", actor="key_cs")
    renewal = reference(AUTHORIZATION, payment_keys.renewal(order.id, order.payment.authorization))
    assert cancelled.status is OrderStatus.SHIPPED and world.spy.voided == [order.payment.authorization]
    assert cancelled.renewing_authorization == order.payment.authorization and cancelled.authorizations_left
    clock.advance(minutes=16)

    assert sweep(world, clock).run(ACTOR) == Settled([order.id], own=[order.id])

    assert world.spy.voided == [order.payment.authorization, renewal]
    after = world.order(order.id)
    assert after.renewing_authorization is None and not after.authorizations_left
