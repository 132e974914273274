"""The order workflow's steps: authorize, reserve, create shipments, and their compensations.

Every step reads the order, acts, then writes with one update conditional on the status and
version it read. A step that loses that race undoes what it did itself (releases the stock it
reserved, voids the authorization it obtained) and either stops (the order was closed) or asks
to be retried (TransientError). Every side effect is keyed by order and step, so running a step
twice changes nothing: Express workflows and stream retries run things at least once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pluggy

from core import payment_keys
from core.actors import WORKFLOW_ACTOR
from core.cancellation import NOT_MADE, Cancellation, own_authorization_keys
from core.carrier_bookings import give_up_unrecorded
from core.errors import (
    Backordered,
    InsufficientStock,
    NotFound,
    OrderClosed,
    OrderHeld,
    OutOfReach,
    OutOfStock,
    PaymentGatewayUnavailable,
    PaymentRefused,
    PluginError,
    PluginUnavailable,
    ReservationsFull,
    StaleVersion,
    TransientError,
    WorkflowOutOfTime,
    caught_message,
    is_own_error,
)
from core.events import OrderEvent
from core.ids import booking_key, reservation_key, sourced_again_key
from core.models import (
    Address,
    Allocation,
    Change,
    GivenUpBooking,
    Location,
    Order,
    Shipment,
    ShipmentLine,
    StepPluginFailure,
    StockLevel,
    is_pick_slip,
    utc_now,
)
from core.money import Money
from core.order_changes import failure_recorder, modify, no_plugin_noted_last
from core.payments import Failure, Payments
from core.ports import (
    Backorders,
    CatalogRepository,
    InventoryRepository,
    LabelStore,
    OrderRepository,
    SourcingRulesRepository,
    TopUp,
    WaitingOrder,
)
from core.sourcing import (
    BACKORDER_PAGE,
    BEHIND_PAGES,
    allocation_plan,
    available_of,
    claims_at,
    destination_of,
    eligible_locations,
    held_back,
    out_of_reach,
    plan_within,
    reach_once_put_back,
    reduced,
    skus_left_short,
    sourceable,
    stocked_once_put_back,
    to_source_again,
)
from core.sourcing_rules import SourcingRules
from core.status import TERMINAL, OrderStatus, PaymentStatus, ShipmentStatus, can_transition
from core.workflow_types import CarrierShipment, SourcingPlan, book_parcel, stored_label

if TYPE_CHECKING:
    from core.exchange_credit import ExchangeCredits

S = OrderStatus
Clock = Callable[[], datetime]
logger = logging.getLogger(__name__)

# Which status each task of infra/order_workflow.asl.json writes (None: it records without
# moving the status). tests/unit/test_workflow_definition.py checks the ASL against this and
# against the transition table.
STEP_RESULTS: dict[str, OrderStatus | None] = {
    "AuthorizePayment": S.AUTHORIZED,
    "ReserveStock": None,
    "CreateShipments": S.ALLOCATED,
    "FailPayment": S.PAYMENT_FAILED,
    "CancelOrder": S.CANCELLED,
    "ParkOrder": S.ON_HOLD,
}

# Where a main step's failure leads, by the error's name (the Lambda's errorType or a States.*
# error). Only business outcomes end an order; everything else (Lambda errors, throttles,
# timeouts, a TransientError that outlived its retries, a broken plugin) parks it on hold for a
# person, so a paid order is never cancelled for an infrastructure reason.
# tests/unit/test_workflow_definition.py checks each task's Catch against this.
BUSINESS_OUTCOMES: dict[str, str] = {
    "OrderClosed": "OrderAlreadyClosed",
    # Held: the execution ends (a Succeed state, nothing waiting, nothing billed); the release
    # starts a new one, whose steps skip what is done.
    "OrderHeld": "OrderOnHold",
    "PaymentDeclined": "FailPayment",
    "OutOfStock": "CancelOrder",
    "Backordered": "OrderBackordered",
}
PARK = "ParkOrder"
# The error the order workflow's CancelRecorded state hands CancelOrder (infra/order_workflow.asl.json):
# finish a cancel recorded outside the workflow, never cancel.
CANCEL_RECORDED = "CancelRecorded"


# A fill of a backordered order is one DynamoDB transaction of at most 100 items, the order's
# update among them: MAX_TOP_UPS stock items, each one Update for every top-up of it (what does
# not fit waits for the next arrival); a fill that keeps losing races is retried by its caller
# (the stream, the workflow's Retry).
MAX_TOP_UPS = 99
FILL_ATTEMPTS = 10


def _fits(top_ups: list[TopUp], sku: str, location_id: str) -> bool:
    """Whether a top-up at (sku, location_id) fits the fill's transaction beside `top_ups`: a stock
    item they name already (its lines of one sku there are one item, however many), or room for
    another (MAX_TOP_UPS items)."""
    items = {(t.sku, t.location_id) for t in top_ups}
    return (sku, location_id) in items or len(items) < MAX_TOP_UPS


def after_failure(error: str) -> str:
    """The state a main step's failure named `error` goes to, once its retries are spent."""
    return BUSINESS_OUTCOMES.get(error, PARK)


CANCELLABLE = frozenset(s for s in OrderStatus if can_transition(s, S.CANCELLED))
# The statuses a write moves an order out of and then starts its workflow (functions/outbox): a
# release from a hold, an edit or a reject of an allocated order (a backordered one's is read
# consistently by its fill).
SENT_ON_FROM = frozenset({S.ON_HOLD, S.ALLOCATED})
# A held order's execution stops before its next step; a release starts it again.
STOPPED = TERMINAL | {S.ON_HOLD}


def stopped(order: Order) -> OrderClosed:
    """What a step raises for an order it must leave alone: OrderHeld on hold, else OrderClosed."""
    if order.status is S.ON_HOLD:
        return OrderHeld(f"order {order.id} is on hold")
    return OrderClosed(f"order {order.id} is {order.status}")


def parcels_room(order: Order, shipment_id: str, rules: SourcingRules) -> int | None:
    """How many locations `rules`' max_shipments leaves for `order`'s parcel `shipment_id` sourced
    again: the limit less the parcels the order keeps beside it, shipped, delivered or pending (the
    rejected one leaves; a cancelled one ships nothing). None without a limit; 0 or less: none."""
    if rules.max_shipments is None:
        return None
    kept = {s.location_id for s in order.shipments if s.id != shipment_id and s.status is not ShipmentStatus.CANCELLED}
    return rules.max_shipments - len(kept)


@dataclass(frozen=True)
class Stall:
    """How the reconciler judged an order stalled (Workflow.park_after_failure's `stalled`): in
    `status` (backordered: with every unit reserved), unchanged since `changed_before` at the
    latest, and first restarted by the reconciler in this stall (Order.restarted_since_change) by
    `restarted_before` at the latest."""

    status: OrderStatus
    changed_before: datetime
    restarted_before: datetime


@dataclass(frozen=True)
class SourcedAgain:
    """A rejected parcel's units sourced again (Workflow.source_parcel_again): the new pending
    `shipments`, booked, and the `allocations` reserved for them; `short`, units by line no other
    location has; what this attempt `reserved` and the `bookings` it made, to give back should its
    write not happen."""

    shipments: list[Shipment]
    allocations: list[Allocation]
    short: dict[str, int]
    reserved: list[tuple[str, str, str]]
    bookings: list[GivenUpBooking]
    # Bookings an earlier attempt of this reject, killed before its write, may have made at the
    # locations whose units it reserved and this plan no longer uses (its reservations there show
    # it): owed a cancel from this attempt's write (Order.reject_in_part).
    maybe_booked: list[GivenUpBooking] = field(default_factory=list)
    # The version of the sourcing rules the units were planned under, for the history to name.
    sourcing_rules_version: int | None = None


class Workflow:
    """The tasks of the order workflow state machine, one method each."""

    def __init__(
        self,
        orders: OrderRepository,
        catalog: CatalogRepository,
        inventory: InventoryRepository,
        plugins: pluggy.PluginManager,
        labels: LabelStore,
        clock: Clock = utc_now,
        sleep: Callable[[float], None] = time.sleep,
        backorders: Backorders | None = None,
        sourcing_rules: SourcingRulesRepository | None = None,
        credits: ExchangeCredits | None = None,
    ):
        self._orders = orders
        self._catalog = catalog
        self._inventory = inventory
        self._hook = plugins.hook
        self._payments = Payments(plugins, sleep=sleep)
        self._labels = labels
        self._clock = clock
        # Every cancel's clean-up runs here (CancelOrder; the outbox starts it for a cancel written
        # elsewhere): that takes a cancelled order out of the backorder queues.
        self._cancellation = Cancellation(
            orders, catalog, inventory, self._payments, clock, credits, backorders=backorders
        )
        self._credits = credits
        # Without a queue nothing could ever wake a backordered order, so a shortage then ends
        # out_of_stock as for any product.
        self._backorders = backorders
        # None: the default rules (version 0) always.
        self._sourcing_rules = sourcing_rules

    def _rules(self) -> SourcingRules:
        return self._sourcing_rules.current() if self._sourcing_rules is not None else SourcingRules()

    def _load(self, order_id: str, *, consistent: bool = False) -> Order:
        """The order; one a plain read shows in a status an execution is started out of (SENT_ON_FROM)
        is read again consistently. The execution a release, an edit or a reject starts reads the
        order just after that write, which an eventually consistent GetItem may not show yet: the
        step would stop (OrderHeld, not retried) or take its work for done (allocated), the
        execution would end, and the order wait for nothing."""
        order = self._orders.get(order_id, consistent=consistent)
        if order is not None and order.status in SENT_ON_FROM and not consistent:
            order = self._orders.get(order_id, consistent=True)
        if order is None:
            raise NotFound(f"no order {order_id}")
        return order

    def _closed_or_retry(self, order_id: str, undo: Callable[[], object]) -> OrderClosed | TransientError:
        """After losing a write race: undo our own side effect, then stop if the order is closed
        (someone else finished it) or held (the release runs this step again), or ask Step
        Functions to run the step again."""
        undo()
        order = self._load(order_id)
        if order.status in STOPPED:
            return stopped(order)
        return TransientError(f"order {order_id} changed while this step ran")

    # --- AuthorizePayment ----------------------------------------------------------------
    def authorize_payment(self, order_id: str, attempt: int) -> None:
        found = self._orders.get_with_token(order_id)
        if found is not None and found[0].status is S.ON_HOLD:
            found = self._orders.get_with_token(order_id, consistent=True)  # maybe released: see _load
        if found is None:
            raise NotFound(f"no order {order_id}")
        order, token = found
        if order.status != S.PENDING:
            if attempt and order.status is S.CANCELLED:
                # A cancel that landed while an earlier attempt's call hung saw no failure to settle,
                # nor anything authorized yet under the order's key.
                self._release_lost_authorizations(order)
            if order.status in STOPPED:
                raise stopped(order)
            return  # authorized already: a repeated execution
        given_up: list[str] = []
        if order.authorized_version > 1:
            # Edited since it was placed: what an earlier version's key may hold at the gateway and
            # the edit could not release (the gateway down then) is released now; so is what an
            # attempt that died may hold under an earlier version of an order stored before
            # `priced_version` existed (each attempt was keyed by the version it read). A failure is
            # in the history; the authorization goes ahead all the same, and its write names the
            # keys still to release, for a cancel or the reconciler (Order.authorization_keys_given_up).
            in_use = payment_keys.authorize(order_id, order.authorized_version)
            earlier = [key for key in own_authorization_keys(order) if key != in_use]
            try:
                self._cancellation.release_lost_authorizations(order, WORKFLOW_ACTOR, unrecorded=earlier)
            except NOT_MADE:  # refused, the gateway down, or the payment plugin failed (PaymentPluginFailed)
                given_up = self._cancellation.unreleased_authorization_keys(order)
        amount = order.payable()  # an exchange's credit paid the rest
        if amount.amount <= 0:
            # Nothing to pay (a free pickup, a 100% promotion, a replacement its credit paid for):
            # no gateway is asked, since many refuse an amount under their minimum and would end a
            # free order payment_failed. Authorized for 0.00 with no reference, so nothing is
            # captured, voided or refunded for it; an edit that makes it owe something authorizes
            # that through the gateway as any edit does (core.fulfillment).
            self._authorize_nothing(order, given_up)
            return
        # Keyed by the version that priced the order: a retry of this same read reuses the
        # authorization, and so does the execution a release starts after a hold placed while
        # pending (a hold changes the version, not the price), while a retry after an edit gets a
        # new one, never the one voided below. Recording a failed attempt makes no new version.
        key = payment_keys.authorize(order_id, order.authorized_version)
        try:
            result = self._payments.authorize(order.payment.method, token, amount, order_id, attempt, key=key)
        except TransientError as error:
            # One attempt per task run: Step Functions retries the task (attempt 1, 2, ...), and
            # only a TransientError by that class name; a record that keeps losing races too.
            # Its key is recorded: the gateway may have approved it, and a cancel releases it.
            with contextlib.suppress(StaleVersion):
                self._recorder(order_id, amount=amount.model_dump(mode="json"), authorization_key=key)(
                    Failure("authorize", attempt + 1, "transient", error.message)
                )
            raise TransientError(error.message) from None
        except PluginUnavailable:
            raise  # nothing loaded asked the gateway
        except PluginError as failed:
            # The plugin raised (or answered what the core cannot take), maybe after the gateway
            # approved: its key and amount are recorded as a lost answer's are, so a cancel (or the
            # reconciler) releases what the gateway may hold under it, even through a plugin that
            # cannot look keys up. Retried by Step Functions, then parked: noted once a run.
            detail = {"amount": amount.model_dump(mode="json"), "authorization_key": key}
            with contextlib.suppress(StaleVersion):
                failure_recorder(
                    self._orders, order_id, WORKFLOW_ACTOR, self._clock,
                    unless=lambda failure, entries: no_plugin_noted_last(entries, WORKFLOW_ACTOR, failure, detail),
                    **detail,
                )(Failure("authorize", attempt + 1, "plugin_error", failed.message))  # fmt: skip
            raise
        new, entry = order.authorize(
            amount, result.reference, at=self._clock(), actor=WORKFLOW_ACTOR, keys_given_up=given_up
        )
        try:
            self._orders.update(new, order, [entry])
        except StaleVersion:
            stored = self._kept(order, amount, result.reference, given_up)
            if stored is None:
                raise self._closed_or_retry(
                    order_id,
                    lambda: self._cancellation.void_unrecorded(order, result.reference, WORKFLOW_ACTOR, key=key),
                ) from None
            if stored.status is S.ON_HOLD:
                raise OrderHeld(f"order {order_id} was put on hold while it was being authorized") from None
            if stored.status in STOPPED:
                raise stopped(stored) from None  # its cancel voids what it recorded

    def _authorize_nothing(self, read: Order, given_up: list[str]) -> None:
        """Record the authorization of an order that owes nothing (Order.authorize with no
        reference), on the order as read, or again on a consistent read while it still waits for
        it owing nothing; an order moved on meanwhile (held, cancelled, edited) is left as the
        authorization with a reference would leave it (_kept)."""
        at = self._clock()

        def decide(order: Order):
            waits = order.waits_for_authorization_on_hold() or (
                order.status is S.PENDING and order.payment.status is PaymentStatus.PENDING
            )
            if not waits or order.payable().amount > 0:
                return None
            return order.authorize(order.payable(), None, at=at, actor=WORKFLOW_ACTOR, keys_given_up=given_up)

        stored = modify(self._orders, read.id, decide, read=read)
        if stored.status is S.ON_HOLD:
            raise OrderHeld(f"order {read.id} was put on hold while it was being authorized")
        if stored.status in STOPPED:
            raise stopped(stored)
        if stored.payment.status is PaymentStatus.PENDING:
            # Edited to owe something meanwhile: the retry authorizes that through the gateway.
            raise TransientError(f"order {read.id} changed while this step ran")

    def _release_lost_authorizations(self, order: Order, *, own: bool = True) -> None:
        # An earlier attempt may have died after the gateway approved, leaving nothing in the history.
        unrecorded = self._cancellation.own_keys_asked(order) if own else ()
        try:
            self._cancellation.release_lost_authorizations(order, WORKFLOW_ACTOR, unrecorded=unrecorded)
        except PaymentRefused:
            pass  # in the history, for an operator, as any refused void
        except PaymentGatewayUnavailable as unavailable:
            raise TransientError(unavailable.message) from None

    def _kept(self, read: Order, amount: Money, reference: str, given_up: list[str]) -> Order | None:
        """The authorization lost its write: the order as stored once it records `reference`, or
        None when the order no longer wants it (edited, cancelled) and the caller voids it.

        Kept when a twin execution recorded it already (one key, so the gateway gave both the same
        authorization: voiding it would void the twin's), and recorded when the order still waits
        for it at the same price: moved on only by a jeopardy mark or a hold (held, a cancel voids
        it, a release carries on after it). Voided there, the retry would ask again under the same
        key and record the authorization the gateway had voided."""
        at = self._clock()

        def decide(order: Order):
            if order.payment.authorization == reference:
                return None
            waits = order.waits_for_authorization_on_hold() or (
                order.status is S.PENDING and order.payment.status is PaymentStatus.PENDING
            )
            if not (waits and order.authorized_version == read.authorized_version and order.payable() == amount):
                return None
            return order.authorize(amount, reference, at=at, actor=WORKFLOW_ACTOR, keys_given_up=given_up)

        try:
            stored = modify(self._orders, read.id, decide)
        except StaleVersion:
            return None
        return stored if stored.payment.authorization == reference else None

    def _recorder(self, order_id: str, **detail: object):
        return failure_recorder(self._orders, order_id, WORKFLOW_ACTOR, self._clock, **detail)

    # --- ReserveStock ----------------------------------------------------------------------
    def reserve_stock(self, order_id: str) -> None:
        order = self._load(order_id)
        if order.status is S.BACKORDERED:
            # Restarted (or retried after backordering): take whatever arrived since, so units
            # that came between the first attempt and the queue entry are not missed. The fill
            # reads the order consistently: one sent back to `authorized` by an edit that this
            # plain read does not show yet is sourced below, not taken as filled. Released from a
            # hold, it takes too the units restocked meanwhile where a count excluded it (their
            # walk passed it over, held): each such location's fill lifts its exclusion.
            for restocked in self._restocked_since_count(order) or [None]:
                order = self.fill_backorder(order_id, restocked=restocked)
            if order.status is S.BACKORDERED and order.short_of():
                # Released from a hold the rules changed under (their wake passes a held order over):
                # left nowhere to take more units, it is sourced again below, under them (the
                # execution that change starts finds it reserved: its steps skip what is done).
                order = self.source_again(order_id)
            if order.status is S.BACKORDERED:
                # Marked anew (the entry written again drops its mark, keeping where it is bought
                # for), so the reorder points buy what it still lacks: a run that died between
                # writing it backordered and marking its entries left them unmarked, and an order
                # released from a hold may find taken the units it was counted for (a held order
                # is passed over), with no other record to buy them again. Bought once: a buy
                # counts what is there and on order.
                short = order.short_of()
                entry = WaitingOrder.for_order(order)
                for sku in sorted({line.sku for line in order.lines if line.line_id in short}):
                    self._backorders.add(sku, entry)
                    self._backorders.recorded(sku, entry)
                return
        if order.status != S.AUTHORIZED or order.allocations:
            if order.status is S.CANCELLED:
                # A run of this step that reserved after the cancel's release and died before its
                # write (which would have failed and undone it) left those units held: this retry
                # is the last step that knows to look (the execution ends OrderAlreadyClosed).
                self._cancellation.release_stock(order)
            if order.status in STOPPED:
                # A run of this step that queued the order and died before its `backordered` write
                # (which, lost, would have handed them on) left the walks stopped at it: held or
                # closed since, it takes nothing from them.
                self._walked_past(order)
                raise stopped(order)
            _check_authorized_visible(order)
            return  # reserved already
        # A stock item with no room for another reservation (DynamoDB's 400 KB item: README
        # "Allocation never oversells") counts as holding no units for this order: it is sourced
        # again without it, each full one found once, so this ends. One it cannot do without
        # parks it for a person (ReservationsFull, not retried away as a shortage nor cancelled).
        full: dict[tuple[str, str], ReservationsFull] = {}
        while True:
            try:
                return self._source_and_reserve(order, full)
            except ReservationsFull as refused:
                if (refused.sku, refused.location_id) in full:
                    raise
                full[(refused.sku, refused.location_id)] = refused

    def _source_and_reserve(self, read: Order, full: dict[tuple[str, str], ReservationsFull]) -> None:
        """Source the order as `read` (authorized, holding no allocations) at its eligible locations,
        leaving out the stock items in `full`, reserve the plan and record it; raises ReservationsFull
        for a stock item found full, or, once one was, for the plan that needs it. Planned as the
        order will be once its write lifts the count exclusions that lapsed (`order`), written over
        `read`."""
        order_id = read.id
        locations = self._catalog.list_locations()
        # The rules in force now decide; the version is named in the order's history.
        rules = self._rules()
        # Where a stock take's exclusion of it has lapsed (units added there since, while it was
        # sent back to be sourced or held: their walk passed it over), it is sourced as it will be
        # once this write lifts the exclusion (Order.reserve's `restocked`, backorder's).
        restocked = self._restocked_since_count(read)
        order = read.model_copy(update=read.counts_lapsed(restocked)[0]) if restocked else read
        # A location that rejected a shipment of this order is never asked again for it.
        eligible = sourceable(order, locations, rules)
        # A retry after a crash may find this order's own reservations: count them as available
        # again, so the plan is the one a first run would make, then reconcile.
        # Looked for wherever the order may have reserved, so a location the rules excluded since
        # gives its units back below rather than keeping them, and so does one that rejected a
        # shipment of it whose release never ran (this order is never sourced there again).
        # And where it held units before it was sent back to be sourced, though that location may
        # have stopped shipping since (Order.held_before).
        anywhere = eligible_locations(order.fulfillment.type, order.fulfillment.location_id, locations)
        # The levels planned on come from the same consistent read of each stock item (holdings).
        held_at = list(dict.fromkeys([loc.location_id for loc in anywhere] + order.held_before))
        mine, stock = self._inventory.holdings(
            self._reservation_keys(order, held_at), {line.sku for line in order.lines},
            [loc.location_id for loc in eligible],
        )  # fmt: skip
        plan = self._plan(order, eligible, locations, rules, mine, full, stock=stock)
        if plan is None:
            # Out of stock cancels the order and voids its authorization, and is not retried: said
            # only on stock as written, not on a plain read that may not show a restock yet.
            plan = self._plan(order, eligible, locations, rules, mine, full, consistent=True)
        cannot_wait: set[str] = set()
        if plan is None and out_of_reach(order, locations, rules):
            # Only the rules or the network leave it no location (every one excluded or none
            # shipping, as a merchant's mistake may): never cancelled over a setting.
            cannot_wait = self._cannot_wait({line.sku for line in order.lines}, order)
            if not cannot_wait:
                # It waits backordered for all of it; the change that gives it a location wakes and fills it.
                plan = SourcingPlan(
                    allocations=[], reasons=[f"no location may supply it under {rules.named()}: it waits until one may"]
                )
        backorder = skus_left_short(order, plan) if plan is not None else set()
        if full and (plan is None or backorder):
            # Short only without a full stock item: no shortage to cancel or wait backordered for
            # (a backorder's fill would meet the same item), but a person's to resolve.
            raise list(full.values())[-1]
        if cannot_wait and self._stocked_once_put_back(order, locations, mine, cannot_wait):
            # A product that may not wait has no waiting state: ParkOrder puts it on hold for a
            # person once the retries are spent (a setting put back meanwhile lets a retry source
            # it), its authorization kept. It holds nothing meanwhile, as at any excluded location;
            # its release sources it under the rules then in force.
            for item in mine:
                self._inventory.release(*item)
            raise OutOfReach(
                f"no location may supply order {order.id} under {rules.named()} (excluded by the rules, or not "
                "shipping), though the locations left out have its units: put the rules or the network back, "
                "then release the order, or cancel it"
            )
        if plan is None:
            # Named in the message, which the cancel's history entry keeps: the rules decided it.
            raise OutOfStock(f"the eligible locations cannot cover order {order.id} under {rules.named()}")
        line_sku = {line.line_id: line.sku for line in order.lines}
        wanted = {
            (line_sku[a.line_id], a.location_id, reservation_key(order.id, a.line_id)): a.quantity
            for a in plan.allocations
        }
        # Where a key of the order must hold more than it does (a line grown, or one whose id an
        # edit changed or that it split: its units held under another of the order's keys), what
        # the order holds there is rearranged in one write: given back first, then reserved again,
        # those units could go to another order in between.
        rearranged = _rearranged(mine, wanted)
        # What the order held before this run, where it rearranged to too: those units were its own.
        held_before = {*mine, *((sku, location_id, key) for (sku, location_id), (_, keys) in rearranged.items()
                                for key in keys)}  # fmt: skip
        for item, quantity in mine.items():
            if item[:2] in rearranged:
                continue
            keep = wanted.get(item, 0)
            if 0 < keep < quantity:
                # Given back in the same write that keeps the rest: released whole, then reserved
                # again, the units still needed could go to another order in between.
                self._inventory.shrink(*item, held=quantity, keep=keep)
            elif keep != quantity:
                self._inventory.release(*item)
        done: list[tuple[str, str, str]] = []
        try:
            for (sku, location_id), (held, keys) in rearranged.items():
                self._inventory.rearrange(sku, location_id, held, keys, keep=rules.kept_back(location_id))
                done.extend((sku, location_id, key) for key in keys)
            for (sku, location_id, key), quantity in wanted.items():
                if (sku, location_id) in rearranged:
                    continue
                # The write itself keeps the safety stock back, so concurrent orders cannot take it.
                keep = rules.kept_back(location_id)
                self._inventory.reserve(sku, location_id, key, quantity, **({"keep": keep} if keep else {}))
                done.append((sku, location_id, key))
        except (InsufficientStock, ReservationsFull) as refused:
            # What the order held before this run (kept whole or shrunk above) stays held for the
            # retry, which counts it as the order's own again: released, another order could take
            # it in between.
            self._release_unrecorded(order_id, done, held_before=held_before)
            if isinstance(refused, ReservationsFull):
                raise
            # The plan lost a race for some units. Another location may still have them: the
            # retry plans again on fresh stock, and ends OutOfStock only if nothing is left.
            raise TransientError(f"stock for order {order_id} changed while it was being reserved") from None
        if backorder:
            self._wait_for_stock(read, plan, done, backorder, rules, held_before=held_before, restocked=restocked)
            return
        new, entry = read.reserve(
            plan.allocations, plan.reasons, at=self._clock(), actor=WORKFLOW_ACTOR, rules_version=rules.version,
            restocked=restocked,
        )  # fmt: skip
        try:
            self._orders.update(new, read, [entry])
        except StaleVersion:
            # Lost to a hold, say: the order keeps what it held before for its release (the hold
            # gave back what it no longer needs, core.holds.give_back_surplus).
            raise self._closed_or_retry(
                order_id, lambda: self._release_unrecorded(order_id, done, held_before=held_before)
            ) from None

    def _plan(
        self, order: Order, eligible: list[Location], locations: list[Location], rules: SourcingRules,
        mine: dict[tuple[str, str, str], int], full: Collection[tuple[str, str]] = (), *, consistent: bool = False,
        stock: dict[str, list[StockLevel]] | None = None, cannot_wait: Callable[[set[str]], set[str]] | None = None,
        within: SourcingRules | None = None,
    ) -> SourcingPlan | None:  # fmt: skip
        """The sourcing plugins' plan for `order` at `eligible` locations on the stock there now
        (`stock`, the levels there when read already), counting what the order holds (`mine`) as
        its own, and nothing more at the stock items `full` (no room for another reservation);
        None when they cannot cover it. `cannot_wait`: which skus may not be left short (by
        default those that do not allow backorder: _cannot_wait). `within`: the rules the plan
        itself keeps, when not `rules` (a parcel sourced again: `max_shipments` the room left beside
        the order's other parcels); older backorders' units are held back under `rules`."""
        if stock is None:
            stock = self._inventory.levels(
                {line.sku for line in order.lines}, [loc.location_id for loc in eligible], consistent=consistent
            )
        # Safety stock is held back from the units available to orders, never out of those this
        # order holds already (an edit sends it back to be sourced): they stay its own.
        stock = rules.for_orders(stock)
        for sku, levels in stock.items():
            stock[sku] = [
                level.model_copy(
                    update={"available": (0 if (sku, level.location_id) in full else max(level.available, 0)) + sum(
                        q for (s, loc, _), q in mine.items() if s == sku and loc == level.location_id)}
                )
                for level in levels
            ]  # fmt: skip
        # Units that arrived for older backordered orders are theirs, though no arrival gave them yet;
        # the units this order holds are its own, whoever older waits (an edit asks for no fewer).
        own: dict[tuple[str, str], int] = defaultdict(int)
        for (sku, location_id, _), quantity in mine.items():
            own[(sku, location_id)] += quantity
        stock = self._behind_older(order, stock, locations, rules, own=own)
        destination = destination_of(order, locations)
        return allocation_plan(
            self._hook, order, eligible, stock, destination, within or rules,
            cannot_wait or (lambda skus: self._cannot_wait(skus, order)),
        )  # fmt: skip

    def _release_unrecorded(
        self, order_id: str, done: list[tuple[str, str, str]], held_before: set[tuple[str, str, str]] | None = None
    ) -> None:
        """Undo a reservation whose record lost its write, except what the order now records: a
        concurrent run of the same step reserved under the same order#line keys and won, and
        releasing its reservations would leave the recorded units held by nothing; and except
        `held_before`, what an open order that records no units held before this run for a line it
        still has, or under a line an edit meanwhile replaced by another of the same sku (its
        retry, or its release from a hold, counts it as its own: Order.reservation_lines; a sku an
        edit removed meanwhile holds nothing, and what a twin run recorded is all it holds). Read
        consistently: no write guards this decision, and an eventually consistent read may not show
        the write that won yet."""
        current = self._load(order_id, consistent=True)
        recorded: set[tuple[str, str, str]] = set()
        if current.status not in TERMINAL:  # a closed order holds nothing, whatever it records
            sku_of = {line.line_id: line.sku for line in current.lines}
            skus = {line.sku for line in current.lines if line.quantity}
            lines = {(sku, reservation_key(order_id, line_id)) for line_id, sku in current.reservation_lines()
                     if sku in skus}  # fmt: skip
            recorded = {
                (sku_of[a.line_id], a.location_id, reservation_key(order_id, a.line_id)) for a in current.allocations
            } or {(sku, location_id, key) for sku, location_id, key in held_before or () if (sku, key) in lines}
        for item in done:
            if item not in recorded:
                self._inventory.release(*item)
        if current.lost_reservations_resourceable():
            self._hold_recorded(current)

    def _hold_recorded(self, order: Order) -> None:
        """Make the inventory hold what `order`, written by a twin run of this step that won, records
        (nothing left yet: authorized, backordered, or allocated by the twin's CreateShipments with
        every parcel pending). This run counted the twin's fresh reservations as the order's own and
        may have given them back, shrunk or moved them before it lost (its plan differed: the rules
        or the stock changed between the two reads); left so, the order's parcel would ship units
        nothing holds, which on_hand never loses. Restored where the units are still there (the same
        conditional writes as a reservation's); one read when all is held. Where another order took
        them meanwhile, the order is sent back to be sourced (_send_back_lost)."""
        sku_of = {line.line_id: line.sku for line in order.lines}
        recorded: dict[tuple[str, str, str], int] = defaultdict(int)
        for allocation in order.allocations:
            key = reservation_key(order.id, allocation.line_id)
            recorded[(sku_of[allocation.line_id], allocation.location_id, key)] += allocation.quantity
        keys: dict[tuple[str, str], list[str]] = defaultdict(list)
        for sku, location_id, key in recorded:
            keys[(sku, location_id)].append(key)
        held = self._inventory.reservations(dict(keys))
        lost: list[dict[str, object]] = []
        for (sku, location_id, key), quantity in sorted(recorded.items()):
            have = held.get((sku, location_id, key), 0)
            if have != quantity:
                try:
                    self._inventory.rearrange(sku, location_id, {key: have} if have else {}, {key: quantity})
                except (InsufficientStock, ReservationsFull):
                    # Taken by another order meanwhile (or no room left there for the key).
                    lost.append({"sku": sku, "location_id": location_id, "recorded": quantity, "held": have})
        if lost:
            self._send_back_lost(order, lost)

    def _send_back_lost(self, order: Order, lost: list[dict[str, object]]) -> None:
        """`order` records units no stock item holds for it (`lost`), and holding them again was
        refused: its parcels would ship units sold to another order. Sent back to be sourced
        (Order.source_again_lost), in a write conditional on the order still recording what was
        checked; this run's retry (and the execution the change starts, from allocated or
        backordered: functions/outbox) sources it again where units are. Logged at WARNING with the
        order's id and what was lost; at ERROR when the order could not be written."""
        at = self._clock()

        def decide(current: Order):
            same = current.status is order.status and current.allocations == order.allocations
            if not same or not current.lost_reservations_resourceable():
                return None  # moved on meanwhile: what moved it decides what it holds
            return current.source_again_lost(lost, at=at, actor=WORKFLOW_ACTOR)

        written: list[Order] = []
        try:
            modify(self._orders, order.id, decide, consistent=True, written=written)
        except StaleVersion:
            logger.error(
                "order %s records units no stock item holds for it, and could not be sent back to be sourced",
                order.id, extra={"order_id": order.id, "lost": lost},
            )  # fmt: skip
            raise
        if written:
            logger.warning(
                "order %s sent back to be sourced: units it recorded as reserved were no longer held for it",
                order.id, extra={"order_id": order.id, "lost": lost},
            )  # fmt: skip

    # --- Backorders ------------------------------------------------------------------------------
    def _stocked_once_put_back(
        self, order: Order, locations: list[Location], mine: dict[tuple[str, str, str], int], skus: set[str]
    ) -> bool:
        """Whether only a setting keeps the `out_of_reach` `order` from the units of `skus` it may
        not wait for (core.sourcing.stocked_once_put_back), on stock as written: said on a plain
        read that may not show a restock yet, it would be cancelled out_of_stock for good."""
        reach = reach_once_put_back(order, locations)
        levels = self._inventory.levels(skus, [loc.location_id for loc in reach], consistent=True)
        own: dict[tuple[str, str], int] = defaultdict(int)
        for (sku, location_id, _), quantity in mine.items():
            own[(sku, location_id)] += quantity
        return stocked_once_put_back(order, reach, levels, own, skus)

    def _restocked_since_count(self, order: Order) -> list[tuple[str, str]]:
        """The (sku, location_id) pairs a stock take's count excluded for `order` whose stock item
        was restocked since (InventoryRepository.restocked_since_count): their exclusion has lapsed,
        though no restock's walk lifted it (the order was not backordered then). One read, only for
        an order a count excluded a location for."""
        counted = {(sku, location_id) for location_id, skus in order.counted_short.items() for sku in skus}
        return sorted(self._inventory.restocked_since_count(counted)) if counted else []

    def _walked_past(self, order: Order) -> None:
        """Hand on the arrivals' walks stopped at `order` (Backorders.stop), which waits for no
        units now (held or closed) though no run of ReserveStock handed them on (it died first):
        one conditional write per sku of its lines, on a park or a Retry that finds it so only."""
        if self._backorders is None:
            return
        entry = WaitingOrder.for_order(order)
        for sku in sorted({line.sku for line in order.lines}):
            self._backorders.walked_past(sku, entry)

    def _cannot_wait(self, skus: set[str], order: Order) -> set[str]:
        """The skus of `skus` `order` may not wait backordered for: those whose product does not
        allow backorder and that the order was not sold to wait for (Order.may_wait: a product
        that stopped allowing it since keeps no customer from the units bought to wait), or all
        when no queue can wake the order (a shortage then ends out_of_stock as for any product).
        One read of the products."""
        if self._backorders is None:
            return set(skus)
        products = self._catalog.get_products(skus)
        allowed = {sku for sku, product in products.items() if product.allow_backorder}
        return set(skus) - allowed - set(order.may_wait)

    def _wait_for_stock(
        self, order: Order, plan: SourcingPlan, done: list[tuple[str, str, str]], short: set[str], rules: SourcingRules,
        held_before: set[tuple[str, str, str]], restocked: Collection[tuple[str, str]] = (),
    ) -> None:  # fmt: skip
        """Record the part reserved and wait `backordered`: queue entries first, so an arrival
        from now on finds the order; then the status; then one look at stock that arrived between
        sourcing and the status (an arrival's walk that read the order still `authorized` stopped
        at it: Backorders.stop); then the entries marked, so the reorder points buy what it lacks,
        which hands those walks on to the younger orders. Raises Backordered unless that completed
        it. A write lost (to a hold, say) undoes this run's reservations but what the order held
        before it (`held_before`), as ReserveStock's own lost write does. The skus it holds every
        unit of get an entry too (`holds`, never marked): under `max_shipments` units of one
        arriving where its missing skus already are may give one location its whole order, and only
        its entry lets that arrival find it."""
        assert self._backorders is not None
        entry = WaitingOrder.for_order(order)
        for sku in sorted(short):
            self._backorders.add(sku, entry)
        holding = WaitingOrder.for_order(order, holds=True)
        for sku in sorted({line.sku for line in order.lines if line.quantity} - short):
            self._backorders.add(sku, holding)
        new, history = order.backorder(
            plan.allocations, plan.reasons, at=self._clock(), actor=WORKFLOW_ACTOR, rules_version=rules.version,
            restocked=restocked,
        )  # fmt: skip
        try:
            self._orders.update(new, order, [history])
        except StaleVersion:
            # Not written backordered: the walks that stopped at it go on past it (held, cancelled
            # or sent back by an edit, it takes nothing from them).
            for sku in sorted(short):
                self._backorders.walked_past(sku, entry)
            raise self._closed_or_retry(
                order.id, lambda: self._release_unrecorded(order.id, done, held_before=held_before)
            ) from None
        # Out of the queues of the skus it waited for before and no longer lacks (a line cut to
        # what it holds by a cancel of units, an edit): each would cost every arrival a read.
        self._backorders.left(order, new)
        # Where a count's exclusion lapsed since this run read the stock items (a restock whose walk
        # found it queued and stopped at it), lifted in the fill there, as a released backorder's
        # (one read, only for an order a count excluded a location for).
        for lapsed in self._restocked_since_count(new) or [None]:
            filled = self.fill_backorder(order.id, restocked=lapsed)
        for sku in sorted(short):
            # Its reorder points buy what it lacks; and the walks that stopped at it go on, now that
            # it took what it may: marked before its fill, the walks handed on could reach the
            # younger orders first.
            self._backorders.recorded(sku, entry)
        if filled.status in STOPPED:
            raise stopped(filled)
        if filled.short_of() and filled.status is S.BACKORDERED:
            # The rules or the network may have changed since this plan read them (a location
            # excluded, or no longer shipping), and their wake may have walked the backordered
            # orders before this one was: when they leave it nowhere to take more units, no arrival
            # nor reorder point would fill it. Sent back as the wake sends such an order; the
            # workflow that change starts sources it under them. Under what it was planned on, an
            # order backordered always has somewhere to take more.
            locations, rules_now = self._catalog.list_locations(), self._rules()
            used = {a.location_id for a in filled.allocations}
            if to_source_again(filled, locations, rules_now):
                filled = self.source_again(order.id)
            elif rules_now.max_shipments is not None and len(used) >= rules_now.max_shipments:
                # Units that came since the plan read the stock (their walks found the order not yet
                # backordered, and left it to this look) may give a location it may not add its
                # whole order: sent back to be sourced there, as such an arrival's walk sends it.
                filled = self.source_again_whole(order.id, rules=rules_now, locations=locations)
            if filled.status is S.AUTHORIZED:
                raise Backordered(f"order {order.id} was sent back to be sourced (its history entry says why)")
        if filled.short_of():
            raise Backordered(f"order {order.id} waits for stock")

    def fill_backorder(
        self, order_id: str, actor: str = WORKFLOW_ACTOR, *,
        queue: str | None = None, restocked: tuple[str, str] | None = None, written: list[Order] | None = None,
    ) -> Order:  # fmt: skip
        """Reserve what has arrived for a backordered order, line by line, at its eligible
        locations; return the order as it is afterwards (unchanged when it is not backordered or
        nothing arrived). The reservations and the order's new allocations are one write
        (Backorders.fill), conditional on what was read: concurrent fills of the same order and
        redelivered arrivals never reserve a unit twice; a fill that loses reads and plans again.
        Units older orders waiting in the same queues may take are not this order's to take
        (`_behind_older`), a change of the rules' wake's fills too: it fills oldest first, but an
        older order it has dealt with may still take units its fill could not (a stock take's
        exclusion that the restock's walk lifts, its `backordered` write still to come).
        An arrival walks one sku's `queue` oldest first: only that sku is the order's without a
        look at the older orders; its other skus may have arrived for older orders whose queues
        the stream has not handed them to yet (the skus of one purchase-order receipt come one
        record after the other). `restocked` (sku, location_id): units of that sku were added to
        on_hand there, which lifts the exclusion of the location a stock take's count of the sku
        made for the order (Order.count_exclusion_lapsed): planned with it, and lifted in the fill's
        write (none, nothing lifted: the next arrival there lifts it, the stock item restocked since its count).
        `written`, when given, gets the version this call wrote (nothing when it wrote none), as
        `modify`'s: a caller that counts fills counts its own, not another's found done meanwhile."""

        def decide(order: Order, full: Collection[tuple[str, str]]) -> tuple[Change, list[TopUp]] | None:
            if order.status is not S.BACKORDERED:
                return None
            lapsed = order.count_exclusion_lapsed(restocked[1], restocked[0]) if restocked is not None else {}
            planned = order.model_copy(update=lapsed) if lapsed else order  # only planned with, never stored
            rules = self._rules()
            locations = self._catalog.list_locations()
            # What it holds is read at every location it may hold stock at (the rules may have
            # excluded one since, or it stopped shipping: its units stay the order's); new units
            # come from the allowed ones.
            eligible = eligible_locations(order.fulfillment.type, order.fulfillment.location_id, locations)
            recorded = [a.location_id for a in order.allocations]
            held = self._reservations_of(order, list(dict.fromkeys([loc.location_id for loc in eligible] + recorded)))
            allowed = sourceable(planned, locations, rules)
            top_ups = self._top_ups(
                planned, allowed, held, rules, destination_of(order, locations), locations,
                queue, full,
            )  # fmt: skip
            if not top_ups:
                return None
            for t in top_ups:
                held[(t.sku, t.location_id, t.key)] = t.quantity
            held_now, at = _allocations(order, held), self._clock()
            change = order.reserve_backordered(
                held_now, at=at, actor=actor, rules_version=rules.version, restocked=restocked
            )
            return change, top_ups

        # Read consistently: "not backordered, nothing to fill" is decided by no conditional write,
        # and the step that has just written the order backordered looks here for the units that
        # came before its queue entry (no arrival would give them to it).
        return self._write_reserving(order_id, decide, "its backorder was filled", written)

    def _write_reserving(
        self, order_id: str, decide: Callable[[Order, Collection[tuple[str, str]]], tuple[Change, list[TopUp]] | None],
        doing: str, written: list[Order] | None = None,
    ) -> Order:  # fmt: skip
        """Write the change `decide` makes of the order, read consistently, and the top-ups of its
        reservations it plans, in one transaction (Backorders.fill); returns the order as written,
        or as read when `decide` says None (nothing to write). A lost race (the order, a reservation
        or the stock moved since the read) reads and decides again; a stock item found with no room
        for another reservation is named to `decide` among those it must leave out (`full`), so this
        ends. TransientError after FILL_ATTEMPTS (its caller is retried: the stream, a Retry).
        `written`, when given, gets the version written (nothing when none was)."""
        assert self._backorders is not None
        # Stock items found with no room for another reservation: planned without (a fill takes
        # nothing there, and the order waits on for what arrives elsewhere, or for room: a release
        # there wakes it).
        full: set[tuple[str, str]] = set()
        for _ in range(FILL_ATTEMPTS):
            order = self._load(order_id, consistent=True)
            decided = decide(order, full)
            if decided is None:
                return order
            (new, entry), top_ups = decided
            try:
                self._backorders.fill(new, order, [entry], top_ups)
            except ReservationsFull as refused:
                full.add((refused.sku, refused.location_id))
                continue
            except StaleVersion:
                continue  # the order, a reservation or the stock moved since the read
            if written is not None:
                written.append(new)
            return new
        raise TransientError(f"order {order_id} or its stock kept changing while {doing}")

    def source_again(self, order_id: str, actor: str = WORKFLOW_ACTOR, *, written: list[Order] | None = None) -> Order:
        """Send a backordered order the sourcing rules in force leave nowhere to take more units
        (`stranded`) while another location may supply it (`to_source_again`: one they leave no
        location at all waits) back to be sourced under them: one write, conditional on its status and version,
        which starts its workflow again (functions/outbox), as an edit or a reject does. Its
        reservations stay until that ReserveStock keeps or releases them. Returns the order as it
        is afterwards (unchanged when it is not backordered or not to be sourced again); `written`
        as fill_backorder's."""
        rules, locations, at = self._rules(), self._catalog.list_locations(), self._clock()

        def decide(order: Order):
            if order.status is not S.BACKORDERED or not to_source_again(order, locations, rules):
                return None
            return order.source_again(rules_version=rules.version, at=at, actor=actor)

        return modify(self._orders, order_id, decide, consistent=True, written=written)

    def source_again_whole(
        self, order_id: str, location_id: str | None = None, actor: str = WORKFLOW_ACTOR, *,
        rules: SourcingRules | None = None, locations: list[Location] | None = None, written: list[Order] | None = None,
    ) -> Order:  # fmt: skip
        """Send a backordered order back to be sourced when `max_shipments` keeps it from adding a
        location beside those it holds units at (`location_id`, when named: the one units arrived
        at) and a plan within the rules now covers every unit it wants (ReserveStock's plan,
        counting what it holds as its own): a fill adds only beside those locations, so it waited
        on for them with its whole order on other shelves (no arrival there may be coming). The
        units the plan takes beyond what the order holds are reserved under its own keys in the same
        write (Backorders.fill: one transaction, conditional on the order's status and version and
        on each stock item's reservation and units), so no walk, handed on or of another sku, and
        no younger order's ReserveStock takes them before its own ReserveStock, which counts them
        as its own, as it counts what it held: what its plan then does not keep it releases, and a
        cancel, a hold or an edit meanwhile treats them as any of the order's reservations. Returns
        the order as it is afterwards (unchanged when it is not sent back). `rules` and `locations`:
        those the caller's walk read and decided on (read here when not given), so a walk that
        meets many orders reads them once, not once per order. `written` as fill_backorder's."""
        rules = rules if rules is not None else self._rules()
        locations = locations if locations is not None else self._catalog.list_locations()

        def decide(order: Order, full: Collection[tuple[str, str]]) -> tuple[Change, list[TopUp]] | None:
            top_ups = self._whole_top_ups(order, location_id, rules, locations, full)
            if top_ups is None:
                return None
            change = order.source_again(
                rules_version=rules.version, at=self._clock(), actor=actor, whole=True, arrived_at=location_id,
                reserving={(t.sku, t.location_id): t.quantity - t.held for t in top_ups},
            )  # fmt: skip
            return change, top_ups

        # Read consistently: "not to be sent back" is decided by no conditional write.
        return self._write_reserving(order_id, decide, "it was sent back to be sourced", written)

    def _whole_top_ups(
        self, order: Order, location_id: str | None, rules: SourcingRules, locations: list[Location],
        full: Collection[tuple[str, str]],
    ) -> list[TopUp] | None:  # fmt: skip
        """What to reserve for `order` to be sent back to be sourced whole (source_again_whole): the
        units a plan within `rules` that covers every unit it wants takes beyond what it holds, by
        stock item (MAX_TOP_UPS of them at most, as a fill: one transaction); None when it is not to
        be sent back."""
        if order.status is not S.BACKORDERED or not order.short_of():
            return None
        used = {a.location_id for a in order.allocations}
        allowed = sourceable(order, locations, rules)
        if rules.max_shipments is None or len(used) < rules.max_shipments:
            return None  # a fill may add a location
        if location_id is not None and (location_id in used or location_id not in {loc.location_id for loc in allowed}):
            return None  # a fill takes units there, or it may not supply the order at all
        eligible = eligible_locations(order.fulfillment.type, order.fulfillment.location_id, locations)
        mine = self._reservations_of(order, list(dict.fromkeys([loc.location_id for loc in eligible] + list(used))))
        plan = self._plan(order, allowed, locations, rules, mine, full, consistent=True, cannot_wait=lambda skus: skus)
        if plan is None:
            return None
        # By stock item, what the plan takes beyond what the order's keys hold there in all, put on
        # the key of the plan's first line there: the plan counted all of them as the order's own
        # (two lines of a sku), and its ReserveStock shares them out among the keys (rearrange).
        skus = {line.line_id: line.sku for line in order.lines}
        wanted: dict[tuple[str, str], int] = defaultdict(int)
        first: dict[tuple[str, str], str] = {}
        for a in plan.allocations:
            place = (skus[a.line_id], a.location_id)
            wanted[place] += a.quantity
            first.setdefault(place, reservation_key(order.id, a.line_id))
        top_ups = []
        for (sku, at), quantity in wanted.items():
            more = quantity - sum(q for (s, loc, _), q in mine.items() if (s, loc) == (sku, at))
            if more > 0:
                key = first[(sku, at)]
                held = mine.get((sku, at, key), 0)
                top_ups.append(TopUp(sku, at, key, held, held + more, rules.kept_back(at)))
        # An order of more stock items than a transaction holds has the rest sourced by its
        # ReserveStock from what is left then (as a fill leaves what does not fit to the next arrival).
        return top_ups[:MAX_TOP_UPS]

    def _top_ups(
        self,
        order: Order,
        eligible: list[Location],
        held: dict[tuple[str, str, str], int],
        rules: SourcingRules,
        destination: Address,
        network: list[Location] | None,
        queue: str | None = None,
        full: Collection[tuple[str, str]] = (),
    ) -> list[TopUp]:
        """What to reserve from available stock (less the safety stock and, given the `network`,
        what older waiting orders may take, but of the sku whose `queue` the caller walks oldest
        first), under the rules: first at
        the locations the order already ships from (no new shipment), each line's own first, then
        the most stocked, then by id; what they lack at new locations the sourcing plugins choose
        as they source any order (`prefer`), no more of them than `max_shipments` leaves room for."""
        skus = {line.sku for line in order.lines}
        # Read consistently: an arrival is handed over moments after its stock item's write, which a
        # plain read may not show yet, and nothing would hand the same units over again.
        levels = self._inventory.levels(skus, [loc.location_id for loc in eligible], consistent=True)
        stock = rules.for_orders(levels)
        if network is not None:
            stock = self._behind_older(order, stock, network, rules, queue)
        # Nothing from a stock item with no room for another reservation (`full`).
        left = {(lvl.sku, lvl.location_id): 0 if (lvl.sku, lvl.location_id) in full else max(lvl.available, 0)
                for levels in stock.values() for lvl in levels}  # fmt: skip
        used = {location_id for (_, location_id, _), quantity in held.items() if quantity > 0}
        top_ups: list[TopUp] = []
        need: dict[str, int] = {}
        for line in order.lines:
            key = reservation_key(order.id, line.line_id)
            need[line.line_id] = line.quantity - sum(q for (_, _, k), q in held.items() if k == key)
            places = sorted(
                (loc for (sku, loc), units in left.items() if sku == line.sku and units > 0 and loc in used),
                key=lambda loc: (-held.get((line.sku, loc, key), 0), -left[(line.sku, loc)], loc),
            )
            for location_id in places:
                if need[line.line_id] <= 0:
                    break
                if not _fits(top_ups, line.sku, location_id):
                    continue  # another stock item than the transaction holds: the next arrival's
                before = held.get((line.sku, location_id, key), 0)
                more = min(need[line.line_id], left[(line.sku, location_id)])
                top_ups.append(TopUp(line.sku, location_id, key, before, before + more, rules.kept_back(location_id)))
                left[(line.sku, location_id)] -= more
                need[line.line_id] -= more
        room = None if rules.max_shipments is None else rules.max_shipments - len(used)
        if room is not None and room <= 0:
            return top_ups
        new = [loc for loc in eligible if loc.location_id not in used]
        free = {sku: [lvl.model_copy(update={"available": left[(sku, lvl.location_id)]})
                      for lvl in levels if lvl.location_id not in used] for sku, levels in stock.items()}  # fmt: skip
        rest = order.model_copy(update={"lines": [
            line.model_copy(update={"quantity": need[line.line_id]}) for line in order.lines if need[line.line_id] > 0
        ]})  # fmt: skip
        fillable = reduced(rest, available_of(rest, new, free))
        plan = None
        if fillable.lines and new:
            plan = plan_within(
                self._hook, fillable, new, free, destination, rules.model_copy(update={"max_shipments": room})
            )
        for a in plan.allocations if plan else []:
            sku = next(line.sku for line in order.lines if line.line_id == a.line_id)
            if not _fits(top_ups, sku, a.location_id):
                continue
            key = reservation_key(order.id, a.line_id)
            top_ups.append(TopUp(sku, a.location_id, key, 0, a.quantity, rules.kept_back(a.location_id)))
        return top_ups

    def _behind_older(
        self, order: Order, stock: dict[str, list[StockLevel]], locations: list[Location], rules: SourcingRules,
        served: str | None = None, *, own: dict[tuple[str, str], int] | None = None,
    ) -> dict[str, list[StockLevel]]:  # fmt: skip
        """`stock` less, at each location, the units of each sku that orders older than `order`,
        waiting in that sku's queue (backordered, or queued and about to be: WaitingOrder.waits_for),
        still lack and may take there (as an arrival would fill
        them: eligible for them, and within `max_shipments`). Units arrive on the stock item before
        the Inventory stream hands them to the queue; an order sourced in between took them from
        orders that had waited longer. A sku's queue is read only where it has units available,
        and only until what is held back covers them, or for BEHIND_PAGES pages at most, so a step
        never reads a long queue near its time limit: what older orders beyond those lack is not
        held back (holding back every unit instead could leave an order waiting for units nobody
        older may take, with no arrival coming to wake it). Held orders are passed over, as an
        arrival passes them over. The sku `served` is left whole: its caller has served the older
        orders waiting for it. The units `order` itself holds (`own`, by
        (sku, location_id), counted in `stock`'s available) are never held back: they did not
        arrive for anyone, they are already its own."""
        own = own or {}
        if self._backorders is None:
            return stock
        behind = WaitingOrder(created_at=order.created_at, order_id=order.id)
        by_id = {loc.location_id: loc for loc in locations}
        held: dict[tuple[str, str], int] = defaultdict(int)
        for sku, levels in stock.items():
            if sku == served:
                continue
            free = {
                level.location_id: level.available - own.get((sku, level.location_id), 0)
                for level in levels
                if level.available > own.get((sku, level.location_id), 0)
            }
            after = None
            for _ in range(BEHIND_PAGES):
                if not free or not (page := self._backorders.waiting(sku, after, BACKORDER_PAGE)):
                    break
                for entry in page:
                    if entry >= behind or not free:
                        free = {}
                        break
                    if entry.holds:
                        continue  # its order holds every unit of the sku it wants: not read
                    if not any(entry.may_take_at(by_id.get(location_id)) for location_id in free):
                        continue  # it may take none of these units (its entry says so): not read
                    older = self._orders.get(entry.order_id, consistent=True)
                    if older is None or not entry.waits_for(older):
                        continue  # held, sent back to be sourced, or no longer waiting
                    lacks, where = claims_at(older, sku, locations, rules, free, self._inventory)
                    for location_id in where & set(free):
                        held[(sku, location_id)] += lacks
                        if held[(sku, location_id)] >= free[location_id]:
                            del free[location_id]
                after = page[-1]
        return held_back(stock, held, own)

    def _reservations_of(self, order: Order, location_ids: list[str]) -> dict[tuple[str, str, str], int]:
        """What the order holds at `location_ids`, under its lines and under those an edit replaced
        and could not release (Order.replaced_lines: no plan keeps them, so they are released)."""
        return self._inventory.reservations(self._reservation_keys(order, location_ids))

    @staticmethod
    def _reservation_keys(order: Order, location_ids: list[str]) -> dict[tuple[str, str], list[str]]:
        """The keys the order may hold units under at `location_ids`, by stock item (_reservations_of)."""
        keys: dict[tuple[str, str], list[str]] = defaultdict(list)
        for line_id, sku in order.reservation_lines():
            for location_id in location_ids:
                keys[(sku, location_id)].append(reservation_key(order.id, line_id))
        return dict(keys)

    # --- A parcel of a partly shipped order sourced again (OrderActions.reject) ----------------
    def source_parcel_again(self, order: Order, shipment_id: str) -> SourcedAgain:
        """The units of `order`'s pending parcel `shipment_id`, whose location rejects it while
        another parcel of the order has left, sourced again as ReserveStock sources an order (the
        sourcing plugins, the rules in force, safety stock kept back, older backorders' units left
        to them) and reserved, then booked with the carrier as CreateShipments books (one parcel
        per location), for the reject's write to record (Order.reject_in_part). Never at the
        rejecting location, one excluded before, nor one that has a parcel of the order: a parcel's
        id is its order's and location's (Order.parcel_id) and its units are reserved under the
        order's line keys there, so a second parcel at a location that shipped one would share its
        id, and a ship of the first sent again would take the second's units. What no other
        location has is `short` (units by line): nothing of a partly shipped order waits
        backordered, so the reject cancels them out_of_stock; so too what does not fit within the
        room max_shipments leaves beside the parcels the order keeps (parcels_room). What the order
        already holds at those locations (an earlier attempt that died before its write) counts as
        its own, and what the plan no longer keeps of it is released. Each parcel is booked under a
        key of this version of the order (sourced_again_key): an attempt that loses its write books
        again under the next version's. Raises TransientError when the stock changed while it was being reserved (503:
        the reject is repeated), and ReservationsFull as ReserveStock does, having released what it
        reserved."""
        parcel = order.shipment(shipment_id)
        units: dict[str, int] = defaultdict(int)
        for item in parcel.lines:
            units[item.line_id] += item.quantity
        part = order.model_copy(update={
            "lines": [line.model_copy(update={"quantity": units[line.line_id]})
                      for line in order.lines if units.get(line.line_id)],
            "allocations": [], "replaced_lines": [],
            "excluded_locations": [*order.excluded_locations, *(s.location_id for s in order.shipments)],
        })  # fmt: skip
        locations = self._catalog.list_locations()
        rules = self._rules()
        eligible = sourceable(part, locations, rules)
        # What an earlier attempt killed before its write holds is read at the locations eligible
        # now and at those only the rules exclude (they may have changed since): released unless
        # the plan keeps it, and its booking there given up (maybe_booked below).
        ruled_out = set(rules.excluded_locations) - set(part.excluded_locations)
        held_at = [loc.location_id for loc in eligible]
        held_at += sorted({loc.location_id for loc in locations if loc.location_id in ruled_out} - set(held_at))
        mine, stock = self._inventory.holdings(
            self._reservation_keys(part, held_at), {line.sku for line in part.lines},
            [loc.location_id for loc in eligible],
        )  # fmt: skip
        # Everything may be left short here: what no location has is cancelled, not waited for.
        # max_shipments counts the parcels the order keeps (shipped or not): the new ones fill the
        # room beside them, and with none left the units are short (an order never has more parcels
        # in all than the rules allow).
        room = parcels_room(order, shipment_id, rules)
        plan = None
        if room is None or room > 0:
            within = rules if room is None else rules.model_copy(update={"max_shipments": room})
            plan = self._plan(
                part, eligible, locations, rules, mine, stock=stock, cannot_wait=lambda skus: set(), within=within
            )
        allocations = list(plan.allocations) if plan is not None else []
        short = {line.line_id: line.quantity for line in part.lines}
        for allocation in allocations:
            short[allocation.line_id] -= allocation.quantity
        sku_of = {line.line_id: line.sku for line in order.lines}
        wanted = {
            (sku_of[a.line_id], a.location_id, reservation_key(order.id, a.line_id)): a.quantity for a in allocations
        }
        for item, quantity in mine.items():
            if wanted.get(item) != quantity:
                self._inventory.release(*item)
        # An attempt killed after booking, before its write, ran no failure path: where it reserved
        # and this plan sends nothing, it may have booked under this version's key (an attempt on
        # another version of the order is not known here: see the README).
        dropped = {location_id for (_, location_id, _), quantity in mine.items() if quantity > 0}
        dropped -= {allocation.location_id for allocation in allocations}
        maybe_booked = [
            GivenUpBooking(shipment_id=sid, booking_key=sourced_again_key(sid, order.version))
            for sid in (order.parcel_id(location_id) for location_id in sorted(dropped))
            if order.fulfillment.type != "pickup"  # its parcels get pick slips: no carrier asked
        ]
        done: list[tuple[str, str, str]] = []
        try:
            for (sku, location_id, key), quantity in wanted.items():
                keep = rules.kept_back(location_id)
                self._inventory.reserve(sku, location_id, key, quantity, **({"keep": keep} if keep else {}))
                done.append((sku, location_id, key))
        except (InsufficientStock, ReservationsFull) as refused:
            self.release_unrecorded_parcels(order.id, done)
            if isinstance(refused, ReservationsFull):
                raise
            raise TransientError(f"stock for order {order.id} changed while it was being reserved") from None
        try:
            shipments, made = self._book_again(order, allocations, locations)
        except Exception:
            self.release_unrecorded_parcels(order.id, done)
            raise
        return SourcedAgain(
            shipments=shipments, allocations=allocations, short={k: v for k, v in short.items() if v},
            reserved=done, bookings=made, maybe_booked=maybe_booked, sourcing_rules_version=rules.version,
        )  # fmt: skip

    def _book_again(
        self, order: Order, allocations: list[Allocation], locations: list[Location]
    ) -> tuple[list[Shipment], list[GivenUpBooking]]:
        """One pending parcel per location of `allocations`, booked under sourced_again_key, and
        the bookings made. A failure after a booking keeps those it made owed a cancel (the next
        attempt books under another key: the failure's write is a new version), as CreateShipments
        keeps them."""
        where = {loc.location_id: loc for loc in locations}
        return self._book_parcels(
            order, allocations, where, lambda shipment_id: sourced_again_key(shipment_id, order.version)
        )

    def _book_parcels(
        self, order: Order, allocations: list[Allocation], locations: dict[str, Location], key_for: Callable[[str], str]
    ) -> tuple[list[Shipment], list[GivenUpBooking]]:
        """One pending parcel per location of `allocations`, each booked with the carrier under
        `key_for(its shipment id)`, its label stored under that key, and the bookings made. The
        bookings made, owed a cancel once no retry will ask for them again (the order cancelled,
        or edited: its parcels are booked under another key) should the caller not record them,
        are kept on the order (Order.unrecorded_bookings_given_up) by a failure after one (the
        next parcel's booking raising), as by a lost write, so a park then a cancel gives them up
        too. So is the booking that raised, as maybe made (its answer may be what was lost: a
        read timeout after the carrier booked). A pickup order's parcels get pick slips (book_parcel),
        no carrier's bookings: none is kept."""
        by_location: dict[str, list[ShipmentLine]] = defaultdict(list)
        for allocation in allocations:
            by_location[allocation.location_id].append(
                ShipmentLine(line_id=allocation.line_id, quantity=allocation.quantity)
            )
        products = self._catalog.get_products({line.sku for line in order.lines})
        line_sku = {line.line_id: line.sku for line in order.lines}
        shipments: list[Shipment] = []
        made: list[GivenUpBooking] = []
        asking: GivenUpBooking | None = None
        try:
            for location_id in sorted(by_location):
                lines = by_location[location_id]
                shipment_id = order.parcel_id(location_id)
                weight = sum((products[line_sku[x.line_id]].weight_grams or 0) * x.quantity for x in lines)
                key = key_for(shipment_id)
                if order.fulfillment.type != "pickup":
                    asking = GivenUpBooking(shipment_id=shipment_id, booking_key=key)
                booked = self._book(order, shipment_id, key, locations[location_id], lines, weight)
                asking = None
                if booked.tracking_number and not is_pick_slip(booked.carrier):
                    made.append(GivenUpBooking(shipment_id=shipment_id, carrier=booked.carrier,
                                               tracking_number=booked.tracking_number, booking_key=key))  # fmt: skip
                # Stored under the booking's key: a booking made for the order as it was, by a step
                # that lost its write to the change, never overwrites the label of the booking made
                # after it.
                shipments.append(
                    Shipment(
                        id=shipment_id, location_id=location_id, lines=lines, carrier=booked.carrier,
                        service=booked.service, tracking_number=booked.tracking_number,
                        label_url=stored_label(self._labels, booked, order.id, key),
                    )
                )  # fmt: skip
        except Exception:  # any: what was booked before it is kept, the failure goes on to the caller
            if made or asking is not None:
                give_up_unrecorded(self._orders, order.id, [*made, *([asking] if asking else [])], self._clock)
            raise
        return shipments, made

    def release_unrecorded_parcels(self, order_id: str, reserved: list[tuple[str, str, str]]) -> None:
        """Give back what source_parcel_again `reserved` for an attempt whose write did not happen,
        but at a location where the order, read consistently, has a parcel now (a twin attempt of
        the same reject that won: the same keys, the same units)."""
        current = self._orders.get(order_id, consistent=True)
        recorded = {s.location_id for s in current.shipments} if current is not None else set()
        for item in reserved:
            if item[1] not in recorded or (current is not None and current.status in TERMINAL):
                self._inventory.release(*item)

    # --- CreateShipments --------------------------------------------------------------------
    def create_shipments(self, order_id: str) -> None:
        order = self._load(order_id)
        if order.status is S.BACKORDERED and order.short_of():
            # Ending the execution waiting is decided by no conditional write, and the execution a
            # fill starts may read the order before that fill shows: read consistently first, or
            # a fully reserved order waits for an arrival it no longer needs.
            order = self._load(order_id, consistent=True)
            if order.status is S.BACKORDERED and order.short_of():
                raise Backordered(f"order {order_id} waits for stock")
        if order.status not in (S.AUTHORIZED, S.BACKORDERED):
            if order.status in STOPPED:
                raise stopped(order)
            _check_authorized_visible(order)
            return  # allocated already
        if not order.allocations:
            raise TransientError(f"order {order_id} has no reservations yet")
        locations = {loc.location_id: loc for loc in self._catalog.list_locations()}
        shipments, made = self._book_parcels(
            order, order.allocations, locations, lambda shipment_id: booking_key(shipment_id, order.rebookings)
        )
        new, entry = order.allocate(shipments, at=self._clock(), actor=WORKFLOW_ACTOR)
        try:
            self._orders.update(new, order, [entry])
        except StaleVersion:
            undo = functools.partial(give_up_unrecorded, self._orders, order_id, made, self._clock)
            raise self._closed_or_retry(order_id, undo) from None
        if self._backorders is not None:
            # Out of its skus' queues, whether it waited until now or was sent back to be sourced
            # since (an edit, a cancel of units): an arrival that meets an entry left by a crash
            # here removes it too.
            self._backorders.left(order, new)

    def _book(
        self, order: Order, shipment_id: str, key: str, origin: Location, lines: list[ShipmentLine], weight: int
    ) -> CarrierShipment:
        return book_parcel(self._hook, order, shipment_id, key, origin, lines, weight)

    # --- Compensation -------------------------------------------------------------------------
    def fail_payment(self, order_id: str, error: str, cause: str) -> None:
        """End the order `payment_failed`, and release what an earlier key of it may have left at
        the gateway (Cancellation.release_lost_authorizations: an attempt whose answer was lost
        before an edit keyed the next one anew); an exchange's replacement gives its credit back on
        the original order (a gateway that cannot look up, void or refund right now: TransientError,
        run again)."""
        at, message = self._clock(), caught_message(cause)
        try:
            order = modify(
                self._orders, order_id,
                lambda order: order.decline_payment(error=error, message=message, at=at, actor=WORKFLOW_ACTOR)
                if order.status is S.PENDING else None,  # failed already, or closed by someone else
            )  # fmt: skip
        except StaleVersion:
            raise TransientError(f"order {order_id} kept changing while it was being marked payment_failed") from None
        self._release_lost_authorizations(order, own=False)  # its own key was just declined
        if self._credits is not None:
            try:
                self._credits.give_back(order, WORKFLOW_ACTOR)
            except PaymentGatewayUnavailable as unavailable:
                raise TransientError(unavailable.message) from None

    def cancel_after_failure(self, order_id: str, error: str, cause: str) -> None:
        """Cancel the order the workflow could not finish (release, void). A void the gateway
        cannot do right now raises TransientError, so Step Functions runs this again; a refused
        one is in the history and the order ends cancelled with its payment `authorized`.

        With `error` CANCEL_RECORDED (the execution the outbox starts for every cancel recorded
        outside the workflow) it only finishes that cancel's clean-up, which the request, the
        jeopardy scan or the pickup expiry that wrote it may have died before finishing: an order
        that is not cancelled is left alone, and a void the gateway refused that cancel is not asked
        again (the same key's answer is the same refusal: a person releases it). An order a person
        put on hold while the step that failed ran is left on hold too, as FailPayment leaves it:
        its release starts the workflow again, which sources it anew (stock may have come
        meanwhile)."""
        if error == CANCEL_RECORDED and self._load(order_id, consistent=True).status is not S.CANCELLED:
            return
        reason = "out_of_stock" if error == "OutOfStock" else "workflow_error"
        try:
            self._cancellation.cancel(
                order_id, reason, WORKFLOW_ACTOR, detail={"error": error, "message": caught_message(cause)},
                closed_ok=True, retry_void_later=True, spare_held=True, unless_refused=error == CANCEL_RECORDED,
            )  # fmt: skip
        except StaleVersion:
            raise TransientError(f"order {order_id} kept changing while it was being cancelled") from None

    def park_after_failure(
        self,
        order_id: str,
        error: str,
        cause: str,
        *,
        stalled: Stall | None = None,
        execution: str = "",
        retried: bool = False,
    ) -> bool:
        """Put the order the workflow could not finish on hold for a person. Reservations and the
        authorization stay: nothing was captured, and a release carries on where it stopped with
        the stock still held. True when this call parked it; False when there was nothing to do
        (parked already by an earlier run, or finished or closed by someone else meanwhile). A
        backordered order is parked too: one whose every unit is reserved but whose shipments
        could not be created would otherwise wait, unseen, for an arrival that may never come.
        `stalled` (the reconciler's: Stall) parks the order only while it is still in that status
        (backordered: with every unit reserved) with no change since the stall's time, first
        restarted by the reconciler in this stall by its other time: one that moved on after it was
        judged stalled (the execution a pass restarted wrote) is left to what moves it, and one no
        pass restarted is never parked as though one had. `execution` (the ParkOrder task's: its
        workflow execution's name) is named in the park's entry, and a park that execution made
        already is this call's too (True) when the call is `retried` (the task's Retry,
        `$$.State.RetryCount` above 0): its attempt before died after the write, before its caller
        counted it (OrdersParked). A first attempt that finds it is the task run twice at once
        (Express runs at least once), whose twin counts it."""
        at = self._clock()
        parked = False
        tried: list[Order] = []  # the version this call wrote

        def decide(order: Order):
            nonlocal parked
            if tried and (order.status, order.version, order.updated_at) == (S.ON_HOLD, tried[-1].version, at):
                # This call's own park: the write landed, its answer was lost (a read timeout, a
                # 500) and botocore's retry of it failed its condition. Parked by this call all
                # the same, so its caller counts it (OrdersParked): taken for a park found done,
                # it would be silent.
                return None
            parked = order.status in (S.PENDING, S.AUTHORIZED, S.BACKORDERED) and (
                stalled is None
                or (
                    order.status is stalled.status
                    and order.last_changed <= stalled.changed_before
                    and (restarted := order.restarted_since_change) is not None
                    and restarted <= stalled.restarted_before
                    # Judged with every unit reserved: one short again waits for stock, no execution.
                    and (order.status is not S.BACKORDERED or order.backorder_filled())
                )
            )
            if not parked:
                return None
            message = caught_message(cause) if _own_error(error) else ""
            change = order.park(error=error, message=message, at=at, actor=WORKFLOW_ACTOR, execution=execution)
            tried.append(change[0])
            return change

        try:
            stored = modify(self._orders, order_id, decide)
        except StaleVersion:
            raise TransientError(f"order {order_id} kept changing while it was being put on hold") from None
        if parked and tried:
            # Its ReserveStock may have queued it and died before its `backordered` write (or before
            # handing on, once written): the walks stopped at it go on, as a lost write sends them.
            self._walked_past(stored)
        return parked or bool(
            execution and retried and stored.status is S.ON_HOLD and self._parked_by(order_id, execution)
        )

    # --- A main step out of time ------------------------------------------------------------------
    def note_plugin_failure(self, order_id: str, failed: PluginError) -> None:
        """Keep `failed`, a main step's failure in a plugin that names the plugin and hook, on the
        order (Order.step_plugin_failure): its execution's retries may run out of time on it, and
        the attempt then refused (out_of_time) calls no plugin, so could not name it otherwise. At
        most one write per attempt, which Step Functions retries anyway; a failed write (the order
        changing meanwhile, or gone) leaves the note out, never the step's own error."""
        named = failed.details[0] if failed.details else {}
        plugin, hook = named.get("plugin"), named.get("hook")
        if not isinstance(plugin, str) or not isinstance(hook, str):
            return  # no plugin named: nothing to point a person to
        failure = StepPluginFailure(plugin=plugin, hook=hook, message=failed.message[:500], at=self._clock())
        with contextlib.suppress(NotFound, StaleVersion):
            modify(self._orders, order_id, lambda order: order.plugin_failure_noted(failure))

    def out_of_time(self, order_id: str, started: datetime, retry_for_seconds: int) -> WorkflowOutOfTime:
        """The refusal of a main step asked once its execution's retries ran their time
        (`retry_for_seconds` from `started`): naming the plugin and hook of the last plugin failure a
        step of this execution noted (note_plugin_failure), which is what its retries were spent on,
        else the time alone (a failure of DynamoDB, of Lambda, of a bug)."""
        try:
            found = self._orders.get(order_id, consistent=True)  # the failure noted a moment ago
        except Exception:  # any: refused otherwise than WorkflowOutOfTime, the step would be retried
            found = None  # past Express's five minutes, which no Catch outlives: the time alone
        failure = found.step_plugin_failure if found is not None else None
        if failure is None or failure.at < started:
            return out_of_time(started, retry_for_seconds)
        return WorkflowOutOfTime(
            f"{failure.message}; retried until the workflow's {retry_for_seconds} s from its start"
            f" ({started.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}) ran out"
        )

    def _parked_by(self, order_id: str, execution: str) -> bool:
        """Whether the order's hold is the park workflow execution `execution` made (the last
        `on_hold` entry of its history, which names it)."""
        found = self._orders.history(order_id, consistent=True)
        held = [entry for entry in found[1] if entry.type is OrderEvent.ON_HOLD] if found is not None else []
        return bool(held) and (held[-1].detail or {}).get("execution") == execution


def out_of_time(started: datetime, retry_for_seconds: int) -> WorkflowOutOfTime:
    """The refusal of a step asked once its execution's retries ran their time, saying that alone."""
    return WorkflowOutOfTime(
        f"the workflow's steps may be retried for {retry_for_seconds} s from its start"
        f" ({started.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}), and that time has run out"
    )


def _check_authorized_visible(order: Order) -> None:
    """A step after AuthorizePayment never finds its order `pending` but on a read that does not
    show that step's write yet (GetItem is eventually consistent): ask to run again rather than
    take the work as done."""
    if order.status is S.PENDING:
        raise TransientError(f"order {order.id} does not show its authorization yet")


def _by_place(allocation: Allocation) -> tuple[str, str]:
    return allocation.line_id, allocation.location_id


def _rearranged(
    mine: dict[tuple[str, str, str], int], wanted: dict[tuple[str, str, str], int]
) -> dict[tuple[str, str], tuple[dict[str, int], dict[str, int]]]:
    """By (sku, location_id) where the order holds units (`mine`) and its plan (`wanted`) wants one
    of its keys to hold more than it does: what its keys hold there, and what the plan wants them
    to hold (InventoryRepository.rearrange)."""
    held: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for (sku, location_id, key), quantity in mine.items():
        held[(sku, location_id)][key] = quantity
    keys: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for (sku, location_id, key), quantity in wanted.items():
        keys[(sku, location_id)][key] = quantity
    return {
        item: (held[item], keys[item])
        for item in held
        if any(quantity > held[item].get(key, 0) for key, quantity in keys[item].items())
    }


def _allocations(order: Order, held: dict[tuple[str, str, str], int]) -> list[Allocation]:
    """The order's allocations as the inventory holds them: one per line and location."""
    line_of = {reservation_key(order.id, line.line_id): line.line_id for line in order.lines}
    return [
        Allocation(line_id=line_of[key], location_id=location_id, quantity=quantity)
        for (_, location_id, key), quantity in sorted(held.items(), key=lambda kv: (line_of[kv[0][2]], kv[0][1]))
        if quantity > 0
    ]


# The error a park for an order the workflow left stalled names (core.reconciliation).
WORKFLOW_STALLED = "WorkflowStalled"


def _own_error(error: str) -> bool:
    """Whether `error` (the Catch's errorType) is one the OMS raises itself (core.errors'
    is_own_error, WORKFLOW_STALLED), whose message it writes for the person who releases a parked
    order. Any other's (botocore's, Lambda's or Step Functions' own, a bug's) may name the AWS
    account, roles and tables, and a park's note and entry are shown to whoever may read the order (a
    storefront's key, its webhooks): it is named by its type only. Its message stays where operators
    read it: the failing step's log line and the execution's history (the park's entry names the
    execution)."""
    return error == WORKFLOW_STALLED or is_own_error(error)
