"""Cancel an order: record the cancel, release the stock it holds, then void its authorization."""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from core import payment_keys
from core.errors import (
    NoPaymentPlugin,
    PaymentDeclined,
    PaymentGatewayUnavailable,
    PaymentPluginFailed,
    PaymentRefused,
    PluginError,
    PluginUnavailable,
    TransientError,
)
from core.events import OrderEvent
from core.ids import reservation_key
from core.models import CaptureRequest, Change, HistoryEntry, Location, Order, Shipment, utc_text
from core.money import Money
from core.order_changes import (
    UNANSWERED_AGAIN,
    Recorder,
    Unless,
    answers_known,
    failure_recorder,
    modify,
    no_plugin_noted_last,
    refusal_noted_once,
    refused_keys,
)
from core.payments import Failure, Payments
from core.ports import Backorders, CatalogRepository, InventoryRepository, OrderRepository, StockMove
from core.status import TERMINAL, OrderStatus, PaymentStatus, ShipmentStatus
from core.workflow_types import PaymentResult

if TYPE_CHECKING:
    from core.exchange_credit import ExchangeCredits

logger = logging.getLogger(__name__)
# What a payment operation asked within a request that was not made raises, each failed attempt in
# the history: the gateway refused it (or no payment plugin took it), stayed unavailable, or its
# plugin failed (PaymentPluginFailed). Nothing was recorded as moved; what stands is asked again
# later (the request repeated, the next change, or the reconciler's pass).
NOT_MADE = (PaymentRefused, PaymentGatewayUnavailable, PaymentPluginFailed)
# The failed authorizations the gateway may have approved all the same: its answer was lost (kind
# `transient`), or the payment plugin failed around its call (`plugin_error`). Their key is released.
LOST_ANSWERS = ("transient", "plugin_error")
# The reason a `payment_voided` gives for an authorization a write that lost its race obtained
# (void_unrecorded: an authorize step a cancel overtook, an edit's, a renewal's), which the order
# never recorded.
LOST_RACE = "an authorization obtained by a write that lost its race, never recorded"
StockItem = tuple[str, str, str]  # a reservation: (sku, location_id, key)
# A parcel in these has left its location: its units are no longer on hand there.
HANDED_OVER = frozenset({ShipmentStatus.SHIPPED.value, ShipmentStatus.DELIVERED.value})
# OMS_AUTHORIZATION_VALID_DAYS: how long a gateway keeps an authorization (Stripe 7 days, card
# schemes 5 to 30); one at least this old is authorized again before a capture (renewed_if_lapsed).
AUTHORIZATION_VALID_FOR = timedelta(days=7)
# How long a renewal the gateway declined answers the same caller's repeats from the history
# (_decline_standing), each further decline of theirs in a row twice as long: a block the issuer
# lifts is usually lifted within a day, and card schemes penalise a merchant that asks a declined
# card again and again (Visa: at most 15 reattempts in 30 days), which a warehouse system retrying
# its ship every minute would.
DECLINED_RENEWAL_STANDS_FOR = timedelta(days=1)
# The detail of a settlement's declined renewal asked again under the key it was declined under once
# that decline stood (_renew): when it stood until. Written once (a repeat names the same time), it
# starts the next standing period, twice as long, without a capture not made of its own.
ASKED_AGAIN = "asked_again_after"


# What a cancel records after its void (UnitCancellation.cancel_given_up, once Cancellation.cancel
# returns): the bookings of its parcels cancelled with the carrier, or not.
AFTER_THE_VOID = frozenset({OrderEvent.CARRIER_BOOKING_CANCELLED, OrderEvent.CARRIER_BOOKING_NOT_CANCELLED})


def _after_the_void(entry: HistoryEntry) -> bool:
    return entry.type in AFTER_THE_VOID


def holding_locations(order: Order, network: list[Location]) -> list[str]:
    """Where `order` may hold stock: every location of `network`, and wherever the order records
    units. The network an API container reads is cached for seconds (CachedCatalog) while the
    workflow reads it fresh, so a location added meanwhile may hold the order's units unseen."""
    recorded = [a.location_id for a in order.allocations] + [s.location_id for s in order.shipments]
    return sorted({loc.location_id for loc in network} | set(recorded))


class Cancellation:
    """Used by `POST /orders/{id}/cancel` and by the workflow's compensation alike."""

    def __init__(
        self,
        orders: OrderRepository,
        catalog: CatalogRepository,
        inventory: InventoryRepository,
        payments: Payments,
        clock: Callable[[], datetime],
        credits: ExchangeCredits | None = None,
        *,
        void_failures: Recorder = failure_recorder,
        authorization_valid_for: timedelta = AUTHORIZATION_VALID_FOR,
        backorders: Backorders | None = None,
    ):
        self._orders = orders
        # The backorder queues a cancelled order leaves (the workflow's CancelOrder, which finishes
        # every cancel); None: left to the arrivals' walks, which remove what they meet.
        self._backorders = backorders
        # How a failed attempt at a void, at asking for an edit's authorization again, or at
        # settling a capture a request left is recorded: a pass that asks every few minutes notes an
        # outage once (outage_noted_once).
        self._void_failures = void_failures
        # None: an OMS without returns, whose orders are never an exchange's replacement.
        self._credits = credits
        self._catalog = catalog
        self._inventory = inventory
        self._payments = payments
        self._clock = clock
        self._authorization_valid_for = authorization_valid_for

    def cancel(
        self,
        order_id: str,
        reason: str,
        actor: str,
        *,
        channel: str | None = None,
        detail: dict[str, Any] | None = None,
        closed_ok: bool = False,
        retry_void_later: bool = False,
        spare_held: bool = False,
        confirms_parcels: bool = True,
        writes_off: bool = False,
        expected_version: int | None = None,
        unless_refused: bool = False,
    ) -> Order:
        """End the order cancelled, release every reservation, void its authorization; an
        exchange's replacement gives its credit back on the original order (ExchangeCredits). Refused
        (InvalidTransition, 409) once anything has shipped; with `closed_ok` an order already closed
        otherwise (payment_failed) is left as it is.

        The cancel is a business fact: it is written first, conditional on what was read, and
        only then are stock and payment touched, so a cancel that loses a race to a shipment has
        changed nothing. The payment shows `voided` only after the gateway approved the void; a
        void that is refused or keeps failing leaves it `authorized`, with each failed attempt in
        the history. A cancel of a cancelled order runs the clean-up again (every part is
        idempotent): it finishes an interrupted cancel and retries a failed void. With
        `retry_void_later` a void or a credit's refund that keeps failing raises TransientError (the
        workflow's step is retried); otherwise the cancelled order is returned. With `spare_held`
        an order on hold is left as it is (the workflow's own cancel: a person holds it, and its
        release starts the workflow again). Not `confirms_parcels` (a caller that may not release a
        hold, orders:approve: a storefront): an order held for a person to confirm whether a parcel
        left is refused (ParcelNotConfirmed, 409), nothing written: its cancel puts the parcel's
        units back on sale, which only a person who found it never left may answer. `writes_off` (a
        person's cancel: orders:approve): a parcel a carrier reported delivered whose capture the
        gateway refused is written off with the order (Order.cancel): its units leave on_hand, as
        a ship's do, instead of going back on sale (_release). `expected_version` (the version the
        person cancelling read: their If-Match): an order at another, a cancelled one too, is 409
        `version_conflict` (Order.check_seen), judged in the cancel's conditional write: nothing
        written, released or voided. `unless_refused` (the clean-up the outbox starts for a cancel
        written elsewhere: `void`'s): no void the gateway refused already is asked again."""

        read: list[Order] = []  # the version the cancel was decided on, which still lists its allocations

        def decide(order: Order):
            read[:] = [order]
            order.check_seen(expected_version)
            if order.status is OrderStatus.CANCELLED or (closed_ok and order.status in TERMINAL):
                return None
            if spare_held and order.status is OrderStatus.ON_HOLD:
                return None
            if not confirms_parcels:
                order.check_parcels_kept("cancelled but by a key that may release its hold (orders:approve)")
            return order.cancel(reason, at=self._clock(), actor=actor, detail=detail, writes_off=writes_off)

        order = modify(self._orders, order_id, decide, channel=channel)
        if order.status is not OrderStatus.CANCELLED:
            return order
        self._release(read[-1] if read else order, written_off_stock(order), written_off_at(order))
        if self._backorders is not None:
            self._backorders.left(read[-1] if read else order, order)
        try:
            order = self.void(order, actor, unless_refused=unless_refused)
        except PluginUnavailable:
            raise  # no plugin loaded: nothing recorded the void owed, so the client must repeat the cancel
        except (PaymentRefused, PluginError):
            # Recorded in the history; the payment honestly stays authorized. What was voided is
            # in the answer: the order as stored now. A payment plugin that failed (kind
            # `plugin_error`) left the void owed (Order.own_void_owed): the reconciler's pass asks
            # again (a plugin's bug does not pass in the seconds a workflow's retries take).
            order = self._orders.get(order.id, consistent=True) or order
        except PaymentGatewayUnavailable as unavailable:
            if retry_void_later:
                raise TransientError(unavailable.message) from None
            order = self._orders.get(order.id, consistent=True) or order
        if self._credits is not None:
            try:
                self._credits.give_back(order, actor)  # a replacement's credit, on the original order
            except PaymentGatewayUnavailable as unavailable:
                if retry_void_later:
                    raise TransientError(unavailable.message) from None
            except PluginError:
                # The payment plugin failed in the refund (kind `plugin_error`, in the original's
                # history): the refund stays pending there, which the pending-refund pass asks again;
                # the cancel was written, so it answers cancelled, as after a failed void.
                pass
        return order

    def release_stock(self, order: Order) -> None:
        """Give back what the inventory still holds for the cancelled `order`, as its cancel did
        (idempotent): a workflow step that read the order before the cancel, reserved after the
        cancel's release had run and died before its write could fail (and undo it) left units
        held that nothing else gives back."""
        self._release(order, written_off_stock(order), written_off_at(order))

    def _release(
        self, order: Order, written_off: Mapping[StockItem, int], handed: Mapping[StockItem, datetime]
    ) -> None:
        # Release by what the inventory holds for this order, not only what the order recorded: a
        # step that crashed between reserving and recording leaves nothing behind either, nor does
        # an edit that could not release the lines it replaced. A parcel the cancel wrote off left
        # with its carrier (each parcel's units by its own hand-over: `handed`): its units leave
        # on_hand as a ship's do (units_leave: only the parcel's, what a cancel of units left
        # reserved beyond it given back; none when a stock take since counted them gone), never released.
        for handed_at, units in by_hand_over(written_off, handed):
            units_leave(self._inventory, units, handed_at)
        locations = holding_locations(order, self._catalog.list_locations())
        keys: dict[tuple[str, str], list[str]] = defaultdict(list)
        for line_id, sku in order.reservation_lines():
            for location_id in locations:
                keys[(sku, location_id)].append(reservation_key(order.id, line_id))
        for item in self._inventory.reservations(dict(keys)):
            if item not in written_off:
                self._inventory.release(*item)

    def _void(self, order: Order, authorization: str, actor: str, **detail: object) -> PaymentResult:
        """Void `authorization` under its key, each failed attempt in the history, but not a refusal
        (or an attempt no payment plugin took) by `actor` that the history's run of such answers
        holds already (refusal_noted_once): a cancel a client repeats asks again under the same key,
        which the gateway answers with the same refusal, and each repeat would count the one hold
        again for VoidsNotMadeAlarm and grow the order's item. The run steps over what a cancel
        records after its void (AFTER_THE_VOID: its parcels' bookings cancelled with the carrier),
        which would otherwise end it and have the first repeat record the refusal again."""
        return self._payments.retried(
            "void",
            lambda attempt: self._payments.void(
                order.payment.method, authorization, order.id, payment_keys.void(authorization)
            ),
            refusal_noted_once(self._orders, order.id, actor, self._clock, recorder=self._void_failures,
                               followed_by=_after_the_void, authorization=authorization, **detail),
        )  # fmt: skip

    def void(self, order: Order, actor: str, *, unless_refused: bool = False) -> Order:
        """Void the cancelled order's authorization and record it, once every capture it asked for
        and never recorded is settled (settle_capture_requests), and every other authorization an
        edit or a renewal left (void_requested_authorization, release_renewal,
        void_replaced_authorizations, and the keys it gave up and could not release before it was
        authorized: release_given_up_keys) is voided; one it
        never recorded because the gateway's answer was lost, or the step died before its write, is
        released (release_lost_authorizations, under the order's own key too); nothing else to do
        when the payment is not `authorized`. One that cannot be voided stops none of the others.
        Raises PaymentRefused, PaymentGatewayUnavailable or a payment plugin's PluginError (NOT_MADE,
        _first_to_retry) with every failed attempt recorded (a plugin's failure leaves its own owed);
        otherwise the order no longer owes its own (Order.own_void_owed). `unless_refused` (the
        clean-up of a cancel that asked already, CancelRecorded): neither its own authorization nor
        one an edit or a renewal replaced is asked again when the gateway refused its void and
        nothing since left it owed: under the same key it answers the same refusal, and a second
        `payment_void_failed` would count the one hold twice for VoidsNotMadeAlarm."""
        order = self.settle_capture_requests(order, actor)
        failed: list[Exception] = []
        releases = (self.void_requested_authorization, self.release_renewal,
                    partial(self.void_replaced_authorizations, unless_refused=unless_refused),
                    self.release_given_up_keys, partial(self._void_own, unless_refused=unless_refused))  # fmt: skip
        for release in releases:
            try:
                order = release(order, actor)
            except NOT_MADE as failure:
                failed.append(failure)
                order = self._orders.get(order.id, consistent=True) or order
        if failed:
            raise _first_to_retry(failed)
        if order.own_void_owed:  # what its pending payment's keys held is released by now
            at = self._clock()
            order = modify(self._orders, order.id, lambda current: current.record_own_void_settled(at=at))
        return order

    def void_owed(self, order: Order, actor: str) -> Order:
        """Settle the closed order's own payment that the gateway could not settle, or get to, when
        it was cancelled or ended payment_failed (Order.own_void_owed), as `void` settles it (every
        capture it asked for and never recorded given back first; its authorization voided, or what
        its unpaid payment's keys may hold released: a declined one's own key was declined), and
        record that it is no longer owed; nothing to do when it is not owed. What an edit left is
        not asked here. Raises PaymentRefused or PaymentGatewayUnavailable, each failed attempt in
        the history. Returns the order after."""
        if not order.own_void_owed:
            return order
        order = self.settle_capture_requests(order, actor)
        if order.payment.status is PaymentStatus.DECLINED:
            order = self.release_lost_authorizations(order, actor)
        else:
            order = self._void_own(order, actor)
        at = self._clock()
        return modify(self._orders, order.id, lambda current: current.record_own_void_settled(at=at))

    def _void_own(self, order: Order, actor: str, *, unless_refused: bool = False) -> Order:
        payment = order.payment
        if payment.status is PaymentStatus.PENDING:
            return self.release_lost_authorizations(order, actor, unrecorded=self.own_keys_asked(order))
        authorization = payment.authorization
        if payment.status is PaymentStatus.AUTHORIZED and authorization is None and order.authorized_nothing():
            # Authorized for nothing with no gateway asked (it owed nothing): voided with no gateway asked.
            at = self._clock()
            return modify(
                self._orders, order.id,
                lambda current: current.record_void(None, None, at=at, actor=actor)
                if current.payment.status is PaymentStatus.AUTHORIZED and current.authorized_nothing()
                else None,
            )  # fmt: skip
        if payment.status is not PaymentStatus.AUTHORIZED or not authorization:
            return order
        if unless_refused and not order.own_void_owed:
            found = self._orders.history(order.id, consistent=True)
            if authorization in voids_refused(found[1] if found is not None else []):
                return order  # refused, and nothing since left it owed: a person releases it
        result = self._void(order, authorization, actor)
        at = self._clock()
        return modify(
            self._orders, order.id,
            lambda current: current.record_void(authorization, result.reference, at=at, actor=actor)
            if current.payment.status is PaymentStatus.AUTHORIZED and current.payment.authorization == authorization
            else None,
        )  # fmt: skip

    def own_keys_asked(self, order: Order) -> list[str]:
        """The keys the order's own authorization may have been asked under (own_authorization_keys),
        but none for one cancelled owing nothing before it was authorized (owed_when_cancelled): no
        gateway was ever asked under its key."""
        if order.status is OrderStatus.CANCELLED and order.payment.status is PaymentStatus.PENDING:
            owed = owed_when_cancelled(order, self._orders.history(order.id))
            if owed is not None and owed.amount <= 0:
                return []
        return own_authorization_keys(order)

    def release_lost_authorizations(self, order: Order, actor: str, unrecorded: Collection[str] = ()) -> Order:
        """Release what the gateway may hold for an order that never recorded an authorization
        (its payment `pending`, or `declined`) and no longer asks for it under an earlier key
        (closed, or edited since: an edit prices a new version, whose key its next authorization
        uses): an attempt whose answer was lost (a
        timeout, `payment_authorization_failed` of kind transient, naming its key) may have been
        approved. The payment plugin is asked what the gateway authorized under each such key
        (oms_payment_find_authorization, as for `unrecorded` below), so an attempt that never
        reached the gateway leaves no new hold: only what it holds is voided, and the key is looked
        up again by the next release. A plugin without that hook is asked to authorize again under
        the key, which the gateway answers with the authorization it made (or makes now), and that
        is voided at once; one the gateway declines was never made. Either way a void is recorded
        (`payment_voided`, naming the key, the order itself unchanged), and a key settled (voided,
        or declined when asked again) is not asked again; one no payment plugin took
        (NoPaymentPlugin, kind `no_plugin`) is, once the plugin is back. Raises PaymentRefused or
        PaymentGatewayUnavailable as `void` does, every failed attempt in the history.

        `unrecorded` are the keys an attempt that may have reached the gateway with nothing in the
        history (the authorize step died after the gateway approved and before the order recorded
        it) was asked under: the cancelled order's own key, or the one an edit leaves behind (each
        candidate of an order stored before its key was kept: own_authorization_keys). Unless the
        history names or settles one, the gateway is asked what it authorized under it
        (_release_unrecorded, which never authorizes), and so is every key such a question failed
        for before (`payment_void_failed` naming it).
        An order still open keeps the key of its current version: that one is its own."""
        unpaid = order.payment.status in (PaymentStatus.PENDING, PaymentStatus.DECLINED)
        found = self._orders.history(order.id) if unpaid else None
        if found is None:
            return order
        lost, settled, unfound = _authorization_keys(found[1])
        if order.status not in TERMINAL:
            # Still open (an edit's release): the key of its current version is the one its next
            # authorization is asked under, and an attempt under it may be recorded by now.
            in_use = payment_keys.authorize(order.id, order.authorized_version)
            lost.pop(in_use, None)
            unfound.discard(in_use)
        ask = sorted((unfound | set(unrecorded)) - settled - set(lost))
        if not lost and not ask:
            return order
        # Each note is written on the history this read (and the notes before it) left, conditional
        # on its length (_void_under_key): one the step's retry noted meanwhile is not noted again.
        known = [found]
        for key in ask:
            self._release_unrecorded(order, key, actor, history=known)
        stored = self._orders.get_with_token(order.id, consistent=True) if lost else None
        token = stored[1] if stored is not None else ""
        for key, amount in lost.items():
            self._release_lost(order, key, amount, token, actor, history=known)
        return self._orders.get(order.id, consistent=True) or order

    def unreleased_authorization_keys(self, order: Order) -> list[str]:
        """The keys release_lost_authorizations would still ask about for `order` (an attempt whose
        answer was lost, a question about one that failed), as its history says now; the key of an
        open order's current version is its own."""
        found = self._orders.history(order.id, consistent=True)
        if found is None:
            return []
        lost, settled, unfound = _authorization_keys(found[1])
        in_use = payment_keys.authorize(order.id, order.authorized_version) if order.status not in TERMINAL else None
        return sorted((set(lost) | unfound) - settled - {in_use})

    def release_given_up_keys(self, order: Order, actor: str) -> Order:
        """Release what the gateway may hold under each key the order gave up and could not release
        (Order.authorization_keys_given_up), as release_lost_authorizations does, and record each
        key settled: an authorization a failed void under the key names (Order.give_up_key) is
        voided as it is, with no lookup. Each is tried, whatever the gateway answers for another;
        raises PaymentRefused or PaymentGatewayUnavailable while one cannot be settled now (each
        attempt in the history; the key stays for the next attempt). Returns the order after."""
        if not order.authorization_keys_given_up:
            return order
        found = self._orders.history(order.id, consistent=True)
        if found is None:
            return order
        lost, settled, _ = _authorization_keys(found[1])
        named = _void_failed_authorizations(found[1])
        stored = self._orders.get_with_token(order.id, consistent=True) if lost else None
        token = stored[1] if stored is not None else ""
        done: list[str] = []
        failed: list[Exception] = []
        for key in found[0].authorization_keys_given_up:
            try:
                if key in lost:
                    self._release_lost(order, key, lost[key], token, actor)
                elif key in settled or (key in named and named[key] == found[0].payment.authorization):
                    pass  # released already; or the order's own, which is never voided here
                elif key in named:
                    reason = "an authorization the order did not record, whose void had failed"
                    self._void_under_key(order, key, named[key], actor, reason)
                else:
                    self._release_unrecorded(order, key, actor)  # a plugin that cannot look it up: warned
            except NOT_MADE as failure:
                failed.append(failure)
            else:
                done.append(key)
        at = self._clock()
        order = modify(self._orders, order.id, lambda current: current.record_given_up_keys_released(done, at=at))
        if failed:
            raise _first_to_retry(failed)
        return order

    def _release_lost(
        self, order: Order, key: str, amount: Money, token: str, actor: str,
        *, history: list[tuple[Order, list[HistoryEntry]]] | None = None,
    ) -> None:  # fmt: skip
        """Release what the gateway may hold under `key`, an attempt to authorize `amount` whose
        answer was lost: looked up (_release_unrecorded), or, by a plugin that cannot look it up,
        asked for again under the key and voided at once; one the gateway declines was never made.
        Either way its note is written on `history` as _void_under_key's: a cancel and the step's
        retry racing to release the same authorization note its void once."""
        if self._release_unrecorded(order, key, actor, looked_up_only=True, history=history):
            return  # the plugin said what the gateway holds under the key: nothing was asked for
        recorder = self._void_failures(
            self._orders, order.id, actor, self._clock, amount=amount.model_dump(mode="json"), authorization_key=key
        )
        try:
            made = self._payments.retried(
                "authorize",
                lambda attempt: self._payments.authorize(order.payment.method, token, amount, order.id, attempt, key),
                recorder,
            )
        except PaymentDeclined:
            return  # never made: the refusal, in the history, settles the key
        voided = self._void(order, made.reference, actor)
        detail = {"authorization": made.reference, "reference": voided.reference, "authorization_key": key,
                  "reason": "an authorization whose answer was lost, no longer asked for"}  # fmt: skip
        self._note_voided(order, detail, actor, history)

    def _release_unrecorded(
        self, order: Order, key: str, actor: str, *, looked_up_only: bool = False,
        history: list[tuple[Order, list[HistoryEntry]]] | None = None,
    ) -> bool:  # fmt: skip
        """Void what the gateway authorized under `key` for `order`, which records none: asked with
        oms_payment_find_authorization, which never authorizes (a key never asked finds nothing),
        and voided at once (`payment_voided`, naming the key). False when the payment plugin does
        not answer that hook (it is optional): the authorization is left as it is, with a warning
        naming the order and the key for an operator, unless `looked_up_only` (the caller asks
        again). Raises NoPaymentPlugin when no payment plugin takes the order's method (removed:
        nobody could say), PaymentGatewayUnavailable while the gateway cannot say, and PaymentRefused or
        PaymentGatewayUnavailable as `void` does: each failed attempt is in the history as a failed
        void naming the key, which the next release asks about again. `history`: as _void_under_key's."""
        method = order.payment.method
        found = self._payments.retried(
            "void",
            lambda attempt: self._payments.find_authorization(method, order.id, key),
            self._void_failures(self._orders, order.id, actor, self._clock, authorization_key=key),
        )
        if found is None:
            if not looked_up_only:
                logger.warning(
                    "no payment plugin looks authorizations up by key: one an attempt that died may have made "
                    "is not released",
                    extra={"order_id": order.id, "payment_method": method, "authorization_key": key},
                )
            return False
        if found.outcome != "approved":
            return True  # never made
        reason = "an authorization whose answer was never recorded, no longer asked for"
        self._void_under_key(order, key, found.reference, actor, reason, history=history)
        return True

    def _void_under_key(
        self, order: Order, key: str | None, authorization: str, actor: str, reason: str,
        *, history: list[tuple[Order, list[HistoryEntry]]] | None = None,
    ) -> Order:  # fmt: skip
        """Void `authorization`, which the gateway made under `key` (None: not known) and the order
        does not record, and note it (`payment_voided`, naming the key when known, and `reason`).
        Raises as `_void`. Returns the order as the note leaves it. `history`: [the order and its
        history as the caller read them], noting no void of `authorization`: the note is written on
        them, conditional on the history being that long still (modify's `history_read`), so one
        noted by another caller since (a cancel that found it under its key, the step's retry that
        found it too) is not noted again; only a write that lands in between costs another read of
        the history. Left holding the order and history as this note leaves them, for the caller's
        next note."""
        keyed = {"authorization_key": key} if key is not None else {}
        voided = self._void(order, authorization, actor, **keyed)
        detail = {"authorization": authorization, "reference": voided.reference, **keyed, "reason": reason}
        return self._note_voided(order, detail, actor, history)

    def _note_voided(
        self, order: Order, detail: dict[str, str], actor: str, history: list[tuple[Order, list[HistoryEntry]]] | None
    ) -> Order:
        """Note the void `detail` describes (`payment_voided`, naming its `authorization`) on
        `order`: on `history` as _void_under_key says. Returns the order as the note leaves it."""
        at = self._clock()
        authorization = detail["authorization"]
        if history is None:
            return modify(self._orders, order.id, lambda current: current.noted(
                OrderEvent.PAYMENT_VOIDED, at=at, actor=actor, detail=detail))  # fmt: skip
        read: list[int] = []
        decided: list[list[HistoryEntry]] = []  # the caller's first; a lost race reads them again

        def decide(current: Order) -> Change | None:
            if decided:
                found = self._orders.history(order.id, consistent=True)
                entries = found[1] if found is not None else []
            else:
                entries = history[0][1]
            read.append(len(entries))
            decided.append(entries)
            if _voided(entries, authorization):
                return None
            noted = current.noted(OrderEvent.PAYMENT_VOIDED, at=at, actor=actor, detail=detail)
            decided[-1] = [*entries, noted[1]]
            return noted

        stored = modify(self._orders, order.id, decide, read=history[0][0], history_read=read)
        history[0] = (stored, decided[-1])
        return stored

    def void_requested_authorization(self, order: Order, actor: str) -> Order:
        """Void the authorization an edit asked for and never recorded (Order.authorization_requested:
        an edit that died between the gateway's answer and its write, one in flight, or one whose
        write lost). It is first taken back from its edit (on an order an edit could still change),
        then asked for again under its key for its amount, which the gateway answers with the
        authorization it made (or makes now), and voided at once; one the gateway declines was
        never made. Raises PaymentRefused or PaymentGatewayUnavailable while it cannot be voided now
        (each attempt in the history; the request stands for the next attempt). Returns the order
        as it stands after; nothing to do when none is requested."""
        if order.authorization_requested is None:
            return order
        found = self._orders.get_with_token(order.id, consistent=True)
        if found is None or found[0].authorization_requested is None:
            return found[0] if found else order
        order, token = found
        request = order.authorization_requested
        assert request is not None

        def same(current: Order) -> bool:
            standing = current.authorization_requested
            return standing is not None and standing.edit_of == request.edit_of

        if not request.withdrawn and order.status is not OrderStatus.CANCELLED:
            at = self._clock()
            order = modify(
                self._orders, order.id,
                lambda current: current.withdraw_reauthorization(at=at)
                if same(current) and not current.authorization_requested.withdrawn else None,
            )  # fmt: skip
            if not same(order):
                return order  # recorded by its edit meanwhile
        key = payment_keys.authorize(order.id, request.authorizes_version)
        try:
            made = self._payments.retried(
                "authorize",
                lambda attempt: self._payments.authorize(
                    order.payment.method, token, request.amount, order.id, attempt, key
                ),
                self._void_failures(self._orders, order.id, actor, self._clock,
                                    amount=request.amount.model_dump(mode="json")),
            )  # fmt: skip
        except PaymentDeclined:
            made = None
        if made is not None and made.reference == order.payment.authorization:
            made = None  # the order's own: never voided here
        voided = self._void(order, made.reference, actor) if made is not None else None
        at = self._clock()
        return modify(
            self._orders, order.id,
            lambda current: current.record_reauthorization_voided(
                made.reference if made else None, voided.reference if voided else None, at=at, actor=actor
            ) if same(current) else None,
        )  # fmt: skip

    def void_replaced_authorizations(self, order: Order, actor: str, *, unless_refused: bool = False) -> Order:
        """Void each authorization an edit or a renewal replaced and record it
        (Order.replaced_authorizations: the edit voids it after its write, and one that died or
        found the gateway down leaves it), but one a standing capture request is asked under
        (Order.capturing_under), which stays until that capture is recorded or given back.
        `unless_refused` (a ship's): nor one whose void the gateway refused before (the history):
        under the same key it answers the same, so asking on every ship would only add the refusal
        to the history; the last parcel's ship, a cancel or the reconciler asks again.
        Raises PaymentRefused or PaymentGatewayUnavailable while one cannot be voided now (each
        attempt in the history; it stays for the next attempt). Returns the order as it stands
        after. Each is tried, whatever the gateway answers for another."""
        free = [a for a in order.replaced_authorizations if not order.capturing_under(a)]
        found = self._orders.history(order.id, consistent=True) if free else None
        history = found[1] if found is not None else []
        if unless_refused:
            refused = voids_refused(history)
            free = [a for a in free if a not in refused]
        failed: list[Exception] = []
        for authorization in free:
            try:
                order = self._void_replaced(order, authorization, actor, **_why_replaced(history, authorization))
            except NOT_MADE as failure:
                failed.append(failure)
        if failed:
            raise _first_to_retry(failed)
        return order

    def _void_replaced(self, order: Order, authorization: str, actor: str, **reason: str) -> Order:
        result = self._void(order, authorization, actor)
        at = self._clock()
        return modify(
            self._orders, order.id,
            lambda current: current.record_replaced_voided(authorization, result.reference, at=at, actor=actor,
                                                           **reason)
            if authorization in current.replaced_authorizations else None,
        )  # fmt: skip

    def void_lapsed(self, order: Order, authorization: str, actor: str) -> Order:
        """Void `authorization`, which a renewal replaced (Order.renew_authorization), and record it;
        nothing to do while a capture asked under it stands (Order.capturing_under: another
        parcel's ship in flight, or dead after the gateway answered), which is asked again, given
        back or recorded under it. Raises as void_replaced_authorizations. Either way it stays
        replaced for whatever voids those next (the next ship once none stands:
        OrderActions._hand_over; a cancel, the reconciler)."""
        if order.capturing_under(authorization):
            return order
        found = self._orders.history(order.id, consistent=True)
        why = _why_replaced(found[1] if found is not None else [], authorization)
        return self._void_replaced(order, authorization, actor, **why)

    def release_renewal(self, order: Order, actor: str) -> Order:
        """Release what the gateway authorized under a renewal the order asked for and never recorded
        (Order.renewing_authorization: a ship or collect that died between the gateway's answer and
        its write, or one in flight, which then voids what it gets itself), as an attempt whose
        answer was lost (_release_lost): looked up by its key and voided, or, by a plugin that
        cannot look keys up, asked for again under its key for the amount it was asked for
        (_renewal_amount), which the gateway answers with the authorization it made, and voided at
        once; then record the renewal settled. Raises as `void`. Returns the order after."""
        lapsed = order.renewing_authorization
        if lapsed is None:
            return order
        key = payment_keys.renewal(order.id, lapsed, order.renewal_declined_before)
        found = self._orders.get_with_token(order.id, consistent=True)
        self._release_lost(order, key, _renewal_amount(order), found[1] if found else "", actor)
        at = self._clock()
        return modify(
            self._orders,
            order.id,
            lambda current: current.drop_renewal(at=at) if current.renewing_authorization == lapsed else None,
        )

    def void_unrecorded(self, order: Order, authorization: str, actor: str, *, key: str | None = None) -> Order:
        """Release an authorization the order does not record: one obtained by a write that lost
        its race, its void noted (`payment_voided`, naming the key, the reason LOST_RACE). When it
        cannot be voided, each failed attempt is in the order's history, for an operator. `key`:
        the one it was authorized under, named by each failed attempt, so that one the gateway
        could not void is asked about again once it is back: on an order never authorized by
        release_lost_authorizations (a cancelled one's is owed: Order.own_void_owed), otherwise by
        release_given_up_keys (Order.give_up_key); either way the reconciler's authorization pass
        voids it on an order nobody changes again. One the history notes voided already (a cancel
        found it under its key meanwhile) is not asked again, nor noted twice. Returns the order as
        stored after (these writes may make a version of their own): what a caller that goes on
        writing writes on."""
        found = self._orders.history(order.id, consistent=True)
        if found is not None and _voided(found[1], authorization):
            return found[0]
        try:
            return self._void_under_key(
                order, key, authorization, actor, LOST_RACE, history=[found] if found is not None else None
            )
        except (PaymentGatewayUnavailable, PaymentPluginFailed):
            # Not made, and not refused: kept, to be voided once the gateway (or the plugin) works.
            if key is not None:
                at = self._clock()
                return modify(self._orders, order.id, lambda current: current.give_up_key(key, at=at))
        except PaymentRefused:
            pass
        return self._orders.get(order.id, consistent=True) or order  # its failures may have written one

    # --- Authorizations grown old --------------------------------------------------------------
    def renewed_if_lapsed(self, order: Order, actor: str) -> Order:
        """`order`, unless its authorization is at least `authorization_valid_for` old (the gateway
        may have let it lapse), or a capture on it was refused or given back
        (Order.authorization_lapsed), or a renewal of it stands: then the order with it replaced by
        a new one (_renew), asked before a capture is requested on it. One comparison on the
        typical order."""
        if not self.renews_first(order):
            return order
        return self._renew(order, actor)

    def renewed_for_settlement(self, order: Order, amount: Money, actor: str) -> Order:
        """renewed_if_lapsed, before the settlement capture of `amount` (what the captures of an
        order left nothing to ship fall short of its total) is requested. A renewal the gateway
        declines is the settlement's failure, as a refused capture is (capture_refused): the
        capture was never asked, so it is recorded as not made (`capture_not_made`, the amount, no
        shipment: SettlementCapturesNotMade) and logged at ERROR for SettlementCapturesNotMadeAlarm,
        then PaymentRefused is raised. Not when this very decline by the same actor is what the
        history ends with already, followed by the capture not made it led to (answered with that
        decline while it stands, the gateway not asked: _decline_standing; then asked again under
        the key it was declined under, its decline written anew to stand twice as long: _renew),
        so a delivery reported again on a loop records its decline once a standing period, and
        counts and logs nothing more; a decline written by a function that died before its capture
        not made is a repeat without one, which is written then (_settlement_not_made_follows). So
        is a renewal no payment plugin took (NoPaymentPlugin, kind `no_plugin`: the capture was not
        asked either, as when no plugin takes the capture itself: capture_refused), the renewal
        standing under its key for when the plugin is back; NoPaymentPlugin is raised."""
        if not self.renews_first(order):
            return order
        repeats: list[Failure] = []
        try:
            return self._renew(order, actor, repeats=repeats)
        except PaymentRefused as refused:  # NoPaymentPlugin too: the capture was not asked either
            if not repeats or not self._settlement_not_made_follows(order.id, amount, actor):
                at, message = self._clock(), str(refused)
                recorded: list[Order] = []
                modify(
                    self._orders, order.id,
                    lambda current: current.record_settlement_not_made(amount, message, at=at, actor=actor)
                    if current.capture_request(None) is None else None,
                    written=recorded,
                )  # fmt: skip
                if recorded:
                    _settlement_not_made_logged(order.id, amount, message)
            raise

    def _settlement_not_made_follows(self, order_id: str, amount: Money, actor: str) -> bool:
        """Whether the run of declined renewals and settlements not made the order's history ends
        with (a carrier's delivery_not_recorded, and an attempt under a declined key: answers_known,
        stepped over) holds `actor`'s capture not made of
        `amount` after its last decline (its declines asked again once they stood stepped over:
        ASKED_AGAIN): a decline repeated (renewed_for_settlement) whose function wrote both. Read on
        the rare path only: a decline."""
        found = self._orders.history(order_id, consistent=True)
        asked = amount.model_dump(mode="json")
        for entry in reversed(answers_known(found[1] if found is not None else [])):
            if entry.type is OrderEvent.DELIVERY_NOT_RECORDED:
                continue
            if _settlement_not_made(entry):
                if entry.actor == actor and (entry.detail or {}).get("amount") == asked:
                    return True
                continue
            if entry.type is not OrderEvent.PAYMENT_AUTHORIZATION_FAILED:
                return False  # anything else
            if entry.actor == actor and not _asked_again(entry):
                return False  # this actor's decline with nothing after it
        return False

    def renews_first(self, order: Order) -> bool:
        """Whether a capture asked of `order` now has its authorization renewed first (renewed_if_lapsed)."""
        return order.renewing_authorization is not None or order.authorization_lapsed(
            self._authorization_valid_for, self._clock()
        )

    def _renew(self, order: Order, actor: str, *, repeats: list[Failure] | None = None) -> Order:
        """The order with its lapsing authorization replaced by a new one, before a capture is
        requested on it: the renewal is requested on the order first (Order.request_renewal), then
        what the old one had left to capture then (Order.renewal_amount) is authorized under a key
        derived from it (payment_keys.renewal; transient failures retried, 503 while they last, the
        request standing), the new one recorded (Order.renew_authorization), then the old one voided
        (void_lapsed: unless another parcel's capture asked under it stands; it, and one whose void
        fails, stays in `replaced_authorizations`, for a cancel, the last parcel's ship or the
        reconciler). A ship repeated after dying asks under the same key for the same amount, so
        the gateway answers with the authorization it made. A decline raises as a capture the
        gateway refuses does (PaymentRefused, 502 `payment_gateway_error`): nothing captured or
        moved, the request dropped, the refusal in the history, and the next renewal asked under a
        new key (counting the declines: the gateway answers a key it has seen with that decline);
        but a renewal of one a capture was refused on or given back (`spent_authorizations`), not
        old yet, is asked once, as Order.refusal_renewal is: declined, it is asked again under the
        key it was declined under (for the amount it was declined: another is a new key), whose
        decline repeated is not recorded again (refusal_noted_once), so a ship repeated on a loop
        asks the card for no more authorizations and adds no entries. A ship or collect repeated by
        the caller a renewal was declined for is answered with that decline (_decline_standing),
        nothing asked or written, for a day (doubled for each decline of its own in a row), or
        until it is old for a renewal asked once; so is a settlement's (`repeats`). The first
        answer carries the same details (when it is asked again) as those repeats.
        What a renewal gets that the order can no longer record (a concurrent edit authorized it
        again, a cancel settled the request) is voided at once. `repeats` (a settlement's:
        renewed_for_settlement): a decline is matched past the settlement's capture not made each
        one led to, and one not recorded for being the history's last is added to it; and the
        renewal of an old authorization that `actor` was declined in the run of declines the
        history ends with, its decline no longer standing, is asked again under that key, as a
        spent one's is, so a carrier's report on a loop asks the card for no more authorizations
        and alarms once; its decline then is written again, at its time, naming when the one it
        repeats stood until (ASKED_AGAIN: two asks racing write it once), so it stands anew, twice
        as long (one gateway call a standing period, not one a report), and is added to it (its
        capture not made is in the history); a standing decline that answers is added to it."""
        at = self._clock()
        # The renewals the gateway declined: one asked now is keyed past them (payment_keys.renewal).
        history = self._orders.history(order.id, consistent=True)
        entries = history[1] if history is not None else []
        refused = refused_keys(entries, "authorize")
        valid_for = self._authorization_valid_for

        standing: list[PaymentRefused] = []  # the decline that answers this ask (the last decide's)
        stood: list[str] = []  # when the settlement's decline this asks again stood until (the last decide's)

        def requested(current: Order):
            standing.clear()
            stood.clear()
            if current.renewing_authorization is not None:
                # A ship that died (or one in flight) asked: asked again under its key; a settlement's
                # that died asking again once its caller's decline stood is that ask (_died_asking_again).
                if repeats is not None:
                    stood.extend(_died_asking_again(entries, refused, current, actor, at, valid_for))
                return None
            if not current.authorization_lapsed(self._authorization_valid_for, at):
                return None
            lapsed = current.payment.authorization or ""
            before = _declined_count(refused, current.id, lapsed)
            old_at = _old_at(current, valid_for, at)
            spent = old_at is not None
            amount = current.request_renewal(at=at)[0].renewal_amount if before else None
            if before:
                standing.extend(_decline_standing(entries, current, lapsed, before, actor, amount, at, old_at))
                if standing:
                    return None  # answered with the decline: nothing asked, nothing written
            last = payment_keys.renewal(current.id, lapsed, before - 1) if before else None
            if spent and last is not None and _declined_amount(entries, last) == _dumped(amount):
                # A renewal for a refused capture is asked once: declined, under that key again, for
                # what it asked (a gateway answers a key with its first answer); for another amount
                # (units cancelled since), under a new key.
                before -= 1
            elif before and repeats is not None:
                # A settlement's caller asking again what it was declined (a carrier's report on a
                # loop), its decline no longer standing: under that key again (a gateway answers it
                # with its first answer), its decline written anew, dated (_asked_again).
                declines = _actors_declines(entries, current.id, lapsed, before, actor)
                if declines and declines[0][1].detail.get("amount") == _dumped(amount):
                    before = declines[0][0]
                    stood.append(utc_text(_stands_until(declines, old_at)))
            return current.request_renewal(at=at, declined_before=before)

        order = modify(self._orders, order.id, requested)
        if standing:
            if repeats is not None:  # the settlement's: its capture not made follows, or is written
                repeats.append(Failure("authorize", 1, "refused", standing[0].gateway_message))
            raise standing[0]
        lapsed = order.renewing_authorization
        found = self._orders.get_with_token(order.id, consistent=True) if lapsed is not None else None
        if lapsed is None or found is None or found[0].renewing_authorization != lapsed:
            return order  # renewed (or settled) meanwhile
        order, token = found
        payment = order.payment
        amount = _renewal_amount(order)
        key = payment_keys.renewal(order.id, lapsed, order.renewal_declined_before)
        again = {ASKED_AGAIN: stood[0]} if stood else {}

        try:
            made = self._payments.retried(
                "authorize",
                lambda attempt: self._payments.authorize(payment.method, token or "", amount, order.id, attempt, key),
                refusal_noted_once(self._orders, order.id, actor, self._clock, recorder=self._void_failures,
                                   followed_by=_settlement_not_made if repeats is not None else None,
                                   repeats=repeats, amount=amount.model_dump(mode="json"), authorization_key=key,
                                   **again),
            )  # fmt: skip
        except PaymentDeclined as declined:
            if again and repeats is not None:  # its capture not made is in the history already
                repeats.append(Failure("authorize", 1, "refused", str(declined)))
            dropped = self._clock()
            modify(
                self._orders, order.id,
                lambda current: current.drop_renewal(at=dropped) if current.renewing_authorization == lapsed else None,
            )  # fmt: skip
            # The decline as the caller's repeats are answered with it (when it stands), read on
            # the rare path only: the same details from the first answer on.
            found_after = self._orders.history(order.id, consistent=True)
            after = found_after[1] if found_after is not None else []
            before = _declined_count(refused_keys(after, "authorize"), order.id, lapsed)
            old_at = _old_at(order, valid_for, dropped)
            answered = _decline_standing(after, order, lapsed, before, actor, amount, dropped, old_at)
            raise (answered or [_renewal_declined(order, lapsed, declined.message)])[0] from None
        at = self._clock()

        def recorded(current: Order):
            if current.renewing_authorization != lapsed:
                return None
            if current.payment.authorization != lapsed:
                return current.drop_renewal(at=at)  # authorized again by an edit meanwhile
            return current.renew_authorization(amount, made.reference, at=at, actor=actor)

        order = modify(self._orders, order.id, recorded)
        if order.payment.authorization != made.reference:
            return self.void_unrecorded(order, made.reference, actor, key=key)
        with contextlib.suppress(*NOT_MADE):
            order = self.void_lapsed(order, lapsed, actor)
        return order

    # --- Captures of shipments ----------------------------------------------------------------
    def capture_share(
        self, order: Order, shipment_id: str, amount: Money, actor: str, *, unless_repeated: bool = False
    ) -> PaymentResult:
        """Ask the gateway for `amount`, a shipment's share, under the shipment's key (retried, each
        failed attempt in the history), against the authorization its request was made under
        (Order.capture_authorization), which the key names when a renewal or an edit made it
        (Order.capture_keyed_under). `unless_repeated`: a refusal the history ends with already
        (refusal_recorded_last) is not recorded again."""
        payment = order.payment
        authorization = order.capture_authorization(shipment_id)
        under = order.capture_keyed_under(shipment_id)
        key = payment_keys.capture(order.id, shipment_id, order.captures_reversed(shipment_id), under)
        repeated = self._repeated(order.id, shipment_id, amount, actor) if unless_repeated else None
        record = self._void_failures(self._orders, order.id, actor, self._clock, unless=repeated,
                                     shipment_id=shipment_id, amount=amount.model_dump(mode="json"),
                                     capture_key=key)  # fmt: skip
        return self._payments.retried(
            "capture",
            lambda attempt: self._payments.capture(payment.method, authorization, amount, order.id, key),
            record,
        )

    def _repeated(self, order_id: str, shipment_id: str | None, amount: Money, actor: str) -> Unless:
        """A capture's failed attempt not to record (the recorder's `unless`, judged in its write's
        decision, so two attempts racing record it once): a refusal (or an attempt no payment
        plugin took) the history ends with already (refusal_recorded_last), or an attempt no
        payment plugin took at a capture request left standing for when the plugin is back, which
        the history ends with already, alone (no_plugin_noted_last)."""
        asked = {"shipment_id": shipment_id, "amount": amount.model_dump(mode="json")}

        def repeated(failure: Failure, entries: list[HistoryEntry]) -> bool:
            return (
                failure.kind in UNANSWERED_AGAIN
                and self.refusal_recorded_last(
                    order_id, shipment_id, amount, failure.message, actor, failure.kind, entries=entries
                )
            ) or no_plugin_noted_last(entries, actor, failure, asked)

        return repeated

    def refusal_recorded_last(
        self, order_id: str, shipment_id: str | None, amount: Money, message: str, actor: str, kind: str, *,
        entries: list[HistoryEntry] | None = None,
    ) -> bool:  # fmt: skip
        """Whether the order's history ends with refused captures only, this very refusal of the
        shipment's capture (`shipment_id` None: the settlement's) among them: each a refused attempt
        and the capture not made it led to, and this one's the same amount, the gateway's same words
        and the same actor. A ship a warehouse system repeats on a loop, or a delivery a carrier's
        tracking reports again and again (each asks the settlement again), is refused so, again and
        again, and so are an order's parcels whose warehouses each loop, in turn; recording each
        repeat (two entries) would fill the order's item (about a thousand repeats to DynamoDB's
        400 KB, then every write on the order fails), and tells an auditor nothing the first did:
        the gateway answers the same key with the same refusal, and nothing moved. So is a capture
        no payment plugin took (kind `no_plugin`: its plugin out of the deployment), which the
        reconciler's kept-back pass asks again each run while the settlement stays owed: its
        attempt and the capture not made are matched as a refusal's are. Only a run of the same
        answer (`kind`) is matched: the gateway's refusal once the plugin is back is recorded. A
        repeat by someone else, in other words, or after anything else happened to the order is
        recorded. The `delivery_not_recorded` a carrier's report records after a refusal of the
        parcel it reported (OrderActions.deliver) is stepped over, and so is a transient failure of
        a capture under a key the gateway refused (core.order_changes.answers_known: the late one
        of a repeat sent twice at once, answered "key in use" while its twin's call was refused,
        whose answer is that refusal; each capture failure names its key, `capture_key`, for that).
        `entries`: the history as the caller's write decides on it (the recorder's `unless`), else
        read here."""
        if entries is None:
            found = self._orders.history(order_id, consistent=True)
            entries = found[1] if found is not None else []
        entries = answers_known(entries)  # a twin's "key in use" after the refusal of its key
        asked = amount.model_dump(mode="json")
        while len(entries) >= 2:
            if entries[-1].type is OrderEvent.DELIVERY_NOT_RECORDED:
                entries = entries[:-1]  # what a carrier's report the refusal stopped records after it
                continue
            failed, not_made = entries[-2:]
            tried, outcome = failed.detail or {}, not_made.detail or {}
            if not (
                failed.type is OrderEvent.PAYMENT_CAPTURE_FAILED and not_made.type is OrderEvent.CAPTURE_NOT_MADE
                and failed.actor == not_made.actor and tried.get("kind") == kind
                and tried.get("shipment_id") == outcome.get("shipment_id")
            ):  # fmt: skip
                return False
            if (failed.actor == actor and tried.get("shipment_id") == shipment_id and tried.get("amount") == asked
                    and tried.get("message") == message[:500]):  # fmt: skip
                return True
            entries = entries[:-2]
        return False

    def reverse_capture(self, order: Order, shipment_id: str, amount: Money, capture: PaymentResult,
                        actor: str, *, written: list[Order] | None = None) -> Order:  # fmt: skip
        """Refund a capture the order cannot record (it changed while the shipment was being
        shipped, or the ship died before recording it) and record that (`payment_capture_reversed`,
        which withdraws the shipment's capture request). Raises PaymentRefused or
        PaymentGatewayUnavailable, each failed attempt in the history with the capture's reference
        for an operator; the capture request, if any, stands for the next attempt. Refunded against
        the authorization it was captured under (Order.capture_authorization). `written` gets the
        version this call's write recorded it in (core.order_changes.modify)."""
        payment = order.payment
        authorization = order.capture_authorization(shipment_id)
        detail = {"shipment_id": shipment_id, "amount": amount.model_dump(mode="json"),
                  "capture_reference": capture.reference}  # fmt: skip
        before = order.captures_reversed(shipment_id)
        key = payment_keys.capture_reversal(order.id, shipment_id, before)
        refund = self._payments.retried(
            "refund",
            lambda attempt: self._payments.refund(payment.method, authorization, amount, order.id, key),
            self._void_failures(self._orders, order.id, actor, self._clock, **detail),
        )
        at = self._clock()
        return modify(
            self._orders, order.id,
            lambda current: current.record_capture_reversal(
                shipment_id, {**detail, "refund_reference": refund.reference}, at=at, actor=actor
            ) if current.captures_reversed(shipment_id) == before else None,
            written=written,
        )  # fmt: skip

    def settle_capture_requests(
        self, order: Order, actor: str, *, written: list[Order] | None = None, shipment_id: str | None = None
    ) -> Order:
        """Settle every capture the order asked for and never recorded (Order.captures_requested: a
        ship, collect or settlement that died between the gateway's answer and its write, or one in
        flight), before its authorization is voided or the shipment changes. A shipment's is first
        taken back from its ship (on an order that could still ship it), then asked for again
        under its key, which the gateway answers with the capture it made (or makes now), and
        refunded at once. The settlement's is asked for again the same way and recorded
        (finish_settlement_capture): it was asked once nothing was left to ship, so it is owed
        whatever changes now. One the gateway refuses was never made; one no payment plugin takes
        (NoPaymentPlugin) is not settled: raised, its request standing. Raises PaymentRefused or
        PaymentGatewayUnavailable while one cannot be settled now (each attempt in the history):
        what was settled stays settled, and the rest waits for the next attempt. Returns the order
        as it stands after. `written` gets each version this call's writes recorded a settlement in
        (none when another caller settled them meanwhile). The request of a parcel its carrier
        reported delivered stands (Order.captures_to_settle): it left, and its ship finishes it
        under the same key (nothing else reaches one: a reject, an edit or a cancel touching such a
        parcel is refused first, Order.check_parcels_reported). `shipment_id`: only that parcel's
        (a reject of one parcel of a partly shipped order, which changes no other)."""
        if not order.captures_to_settle():
            return order
        order = self._orders.get(order.id, consistent=True) or order
        for request in order.captures_to_settle():
            if shipment_id is not None and request.shipment_id != shipment_id:
                continue
            if request.shipment_id is not None:
                order = self._settle(order, request.shipment_id, actor, written)
                continue
            try:
                order = self.finish_settlement_capture(order, actor, written=written)
            except NoPaymentPlugin:
                raise  # its request stands (capture_refused)
            except PaymentRefused:
                order = self._orders.get(order.id, consistent=True) or order  # recorded as never made
        return order

    def _settle(self, order: Order, shipment_id: str, actor: str, written: list[Order] | None = None) -> Order:
        if _waiting(order, shipment_id) and order.status is not OrderStatus.CANCELLED:
            at = self._clock()
            order = modify(
                self._orders, order.id,
                lambda current: current.withdraw_capture_request(shipment_id, at=at, actor=actor)
                if _waiting(current, shipment_id) else None,
            )  # fmt: skip
        request = order.capture_request(shipment_id)
        if request is None:
            return order  # recorded by its ship, or settled, meanwhile
        try:
            capture = self.capture_share(order, shipment_id, request.amount, actor)
        except NoPaymentPlugin:
            raise  # nobody asked the gateway: the request stands for when the plugin is back
        except PaymentRefused as refused:
            at, message = self._clock(), str(refused)
            return modify(
                self._orders, order.id,
                lambda current: current.record_capture_not_made(shipment_id, message, at=at, actor=actor)
                if current.capture_request(shipment_id) is not None else None,
                written=written,
            )  # fmt: skip
        return self.reverse_capture(order, shipment_id, request.amount, capture, actor, written=written)

    # --- The settlement capture ---------------------------------------------------------------
    def capture_settlement(self, order: Order, amount: Money, actor: str) -> Order:
        """Capture `amount` more, the rest of a total that cancelled units left higher than the
        captures once no parcel is pending, and record it. The capture is requested on the order
        first (Order.request_settlement_capture), so one the gateway makes is never lost: a
        settlement that died after the gateway answered leaves the request, and whatever settles
        the order next asks again under the same key for the same amount and records it (a request
        standing, one in flight included, is reused here whatever `amount` says). Raises
        PaymentRefused (the request goes: none was made) or PaymentGatewayUnavailable (the request
        stands: it may have been), each failed attempt in the history. Returns the order after."""
        at = self._clock()
        requested: list[bool] = []  # whether this call's write made the request (the last decide's)

        def decide(current: Order):
            requested.clear()
            if current.capture_request(None) is not None:
                return None
            requested.append(True)
            return current.request_settlement_capture(amount, at=at)

        order = modify(self._orders, order.id, decide)
        return self.finish_settlement_capture(order, actor, fresh=bool(requested))

    def capture_refused(
        self, order_id: str, shipment_id: str | None, request: CaptureRequest, refused: PaymentRefused, actor: str,
        *, fresh: bool = False, unless_repeated: bool = False, written: list[Order] | None = None,
    ) -> Order | None:  # fmt: skip
        """The gateway refused the capture `request` (of `shipment_id`, None: the settlement): none
        was made, and the request goes, unless the order has another one for it by now (a timeout
        leaves a request: the capture may have been made). A NoPaymentPlugin is no gateway's
        answer, and an earlier ask under the request's key may have been captured through the
        removed plugin: the request stands for when it is back, unless it is `fresh` (the caller's
        own write made it, so nothing was asked under it before). `unless_repeated`: a refusal the
        history ends with already (refusal_recorded_last, as capture_share left it) goes with no
        entry: decided before the write, not in it, as the write is conditional on the request it
        takes away, so of two calls refused one request at once only one's lands (the other, read
        again, finds no request and records nothing): the capture not made is recorded once. The
        settlement's, once recorded, is logged at ERROR naming the order, the amount and its
        currency (the entry counts for SettlementCapturesNotMadeAlarm). Returns the order as it
        then is (None when nothing was recorded). `written` gets the version this call's write
        recorded it in. The request is matched by value, which is its identity here: one made
        again since differs in its authorization (the refusal spent `request`'s, renewed before
        anything more is captured on it), except on a renewal made for a refusal (not spent
        again), where it is the same question under the same key, which the gateway answers with
        this very refusal."""
        if isinstance(refused, NoPaymentPlugin) and not fresh:
            return None
        at, message, asked = self._clock(), str(refused), not isinstance(refused, NoPaymentPlugin)
        kind = "refused" if asked else "no_plugin"
        noted = not (
            unless_repeated
            and self.refusal_recorded_last(order_id, shipment_id, request.amount, refused.gateway_message, actor, kind)
        )  # fmt: skip
        mine: list[Order] = []
        after = modify(
            self._orders, order_id,
            lambda current: current.record_capture_not_made(
                shipment_id, message, at=at, actor=actor, refused=asked, noted=noted
            ) if current.capture_request(shipment_id) == request else None,
            written=mine,
        )  # fmt: skip
        if written is not None:
            written.extend(mine)
        if shipment_id is None and noted and mine:
            _settlement_not_made_logged(order_id, request.amount, message)
        return after

    def finish_settlement_capture(
        self, order: Order, actor: str, *, fresh: bool = False, written: list[Order] | None = None
    ) -> Order:
        """Ask the gateway for the settlement capture `order` requested, under its key (what was
        captured before it, which its request keeps as it is, and the authorization it is asked
        under when a renewal or an edit made it: Order.capture_keyed_under), and record it; nothing to do when
        none is requested. Raises as capture_settlement. `fresh`: the caller has just made the
        request (capture_refused). A refusal the history ends with already is not recorded again
        (refusal_recorded_last). `written` gets the version this call's write recorded it in (the
        capture, or the refusal that says none was made)."""
        request = order.capture_request(None)
        if request is None:
            return order
        payment = order.payment
        authorization = order.capture_authorization(None)
        key = payment_keys.settlement_capture(order.id, str(payment.captured.amount), order.capture_keyed_under(None))
        try:
            result = self._payments.retried(
                "capture",
                lambda attempt: self._payments.capture(payment.method, authorization, request.amount, order.id, key),
                self._void_failures(self._orders, order.id, actor, self._clock,
                                    unless=self._repeated(order.id, None, request.amount, actor),
                                    amount=request.amount.model_dump(mode="json"), capture_key=key),
            )  # fmt: skip
        except PaymentRefused as refused:
            # Asked again by every repeat of the last ship and every delivery reported again.
            self.capture_refused(
                order.id, None, request, refused, actor, fresh=fresh, unless_repeated=True, written=written
            )
            raise
        at = self._clock()
        return modify(
            self._orders, order.id,
            lambda current: current.record_settlement_capture(request.amount, result.reference, at=at, actor=actor)
            if current.capture_request(None) == request else None,
            written=written,
        )  # fmt: skip


def _settlement_not_made_logged(order_id: str, amount: Money, message: str) -> None:
    """The ERROR line of a settlement capture recorded as not made: the parcels have left, and no
    pass asks it again: a person (SettlementCapturesNotMadeAlarm's runbook finds it by its message)."""
    logger.error(
        "settlement capture of order %s not made, its captures %s %s short of its total: %s; left to a person",
        order_id, amount.amount, amount.currency, message,
        extra={"order_id": order_id, "amount": str(amount.amount), "currency": amount.currency},
    )  # fmt: skip


def _settlement_not_made(entry: HistoryEntry) -> bool:
    """Whether `entry` records the settlement's capture not made (no shipment)."""
    return entry.type is OrderEvent.CAPTURE_NOT_MADE and not (entry.detail or {}).get("shipment_id")


def written_off_stock(order: Order) -> dict[StockItem, int]:
    """The units of the parcels a cancel of `order` wrote off (Order.written_off), by reservation
    ((sku, location_id, key)): they left with the carrier, so they leave on_hand as a ship's do
    (units_leave, leaving_moves)."""
    return parcel_units(order, order.written_off())


def written_off_at(order: Order) -> dict[StockItem, datetime]:
    """When the units of the parcels a cancel of `order` wrote off (Order.written_off) had left
    their location, by reservation ((sku, location_id, key)): their carrier's report of the
    parcel's delivery (ReportedDelivery.at, the time a ship of such a parcel records as its
    shipped_at: Order.ship), the latest of the parcels carrying them; none where no report is
    recorded. A stock take recorded after it counted the shelf without them (units_leave's
    `handed_at`): each parcel by its own report, as a count between two parcels' reports counted
    the first one's units out and the second one's in."""
    handed: dict[StockItem, datetime] = {}
    # One parcel at most carries a reservation here, so `max` picks nothing: a booking makes one
    # parcel per location (Workflow._book_parcels), a reject sources none where the order has one
    # (Workflow.source_parcel_again), a relabel keeps the parcel's id, and sourced again the parcels
    # go with their marks (Order._sourced_again, refused while a write-off's step is owed).
    for shipment in order.written_off():
        if (mark := order.reported(shipment.id)) is not None:
            for item in parcel_units(order, [shipment]):
                handed[item] = max(handed.get(item, mark.at), mark.at)
    return handed


def by_hand_over(
    units: Mapping[StockItem, int], handed: Mapping[StockItem, datetime]
) -> list[tuple[datetime | None, dict[StockItem, int]]]:
    """`units` (by reservation) grouped by when they were handed over (`handed`: written_off_at;
    None for those it does not know), each group's units leaving on_hand by its own time."""
    groups: dict[datetime | None, dict[StockItem, int]] = defaultdict(dict)
    for item, quantity in sorted(units.items()):
        groups[handed.get(item)][item] = quantity
    return list(groups.items())


def parcel_units(order: Order, parcels: Iterable[Shipment]) -> dict[StockItem, int]:
    """The units `parcels` of `order` carry, by reservation ((sku, location_id, key))."""
    sku_of = {line.line_id: line.sku for line in order.lines}
    units: dict[StockItem, int] = defaultdict(int)
    for parcel in parcels:
        for item in parcel.lines:
            units[(sku_of[item.line_id], parcel.location_id, reservation_key(order.id, item.line_id))] += item.quantity
    return dict(units)


def leaving_moves(
    units: Mapping[StockItem, int], held: Mapping[StockItem, int], handed_at: datetime | None = None
) -> list[StockMove]:
    """How the `units` of parcels that left (shipped, collected or written off) by `handed_at` (when
    known), by reservation, leave on_hand, and no more, given what their reservations hold (`held`;
    one holding nothing has no move): a reservation holding more than its parcel carries (a cancel of
    units wrote the smaller parcel, and its stock step had not run or never ran: Order.stock_owed) is
    brought down to the parcel's units first, the rest back to available, then those leave (none from
    on_hand when a stock take recorded after `handed_at` counted them gone: StockMove); each move
    conditional on what its reservation held (a release that won meanwhile leaves it as is)."""
    return [
        StockMove(
            *item,
            held=quantity,
            keep=units[item] if 0 < units[item] < quantity else quantity,
            ships=True,
            handed_at=handed_at,
        )
        for item, quantity in sorted(held.items())
        if item in units
    ]


def units_leave(
    inventory: InventoryRepository, units: Mapping[StockItem, int], handed_at: datetime | None = None
) -> None:
    """The `units` of parcels that left leave on_hand, and no more (leaving_moves), one write at a
    time: each reservation holding more first shrinks to its parcel's units
    (InventoryRepository.shrink, conditional on what it held), then each ships (idempotent by key;
    with `handed_at`, when they left, a stock take recorded since counted them out already:
    InventoryRepository.ship)."""
    if units:
        _leave(inventory, units, inventory.reservations(_keys_by_item(units)), sorted(units), handed_at)


def units_left_behind(
    inventory: InventoryRepository, units: Mapping[StockItem, int], handed_at: datetime | None = None
) -> dict[StockItem, int]:
    """Finish what the request that recorded parcels as left (ship, collect, a carrier's delivery
    report of a pending parcel) may have died before doing: the `units` their reservations still
    hold leave on_hand as that request's own units_leave would have made them leave. Answers the
    units found still held, which leave now, by reservation (none once that request made them
    leave: one read, no write). Only those reservations are written, each write conditional on the
    reservation (a shrink on what it held, a ship on its key): that request, sent again or still on
    its way, or this run again, at the same time moves them once, whichever writes first. A stock
    take recorded after `handed_at` (when they left) counted them out of on_hand already: their
    reservations are given up, on_hand left as counted (InventoryRepository.ship)."""
    if not units:
        return {}
    held = inventory.reservations(_keys_by_item(units))
    moves = _leave(inventory, units, held, [item for item in sorted(units) if item in held], handed_at)
    return {(move.sku, move.location_id, move.key): move.keep for move in moves}


def _keys_by_item(units: Mapping[StockItem, int]) -> dict[tuple[str, str], list[str]]:
    keys: dict[tuple[str, str], list[str]] = defaultdict(list)
    for sku, location_id, key in units:
        keys[(sku, location_id)].append(key)
    return dict(keys)


def _leave(
    inventory: InventoryRepository, units: Mapping[StockItem, int], held: Mapping[StockItem, int],
    shipping: Iterable[StockItem], handed_at: datetime | None,
) -> list[StockMove]:  # fmt: skip
    """The leaving_moves of `units` given what their reservations hold (`held`): the shrinks, then
    a ship of each of `shipping` (handed over at `handed_at`)."""
    moves = leaving_moves(units, held, handed_at)
    for move in moves:
        if move.keep < move.held:
            inventory.shrink(move.sku, move.location_id, move.key, held=move.held, keep=move.keep)
    for item in shipping:
        inventory.ship(*item, handed_at=handed_at)
    return moves


def parcels_left(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> set[str]:
    """The ids of the parcels a change of an order recorded as handed over (shipped, or delivered
    without a ship before it: a pickup collected, a pending parcel a carrier reported delivered),
    given the order documents before (`old`, None for a new order) and after it (`new`), as the
    Orders stream carries them: read on the documents, so a change that hands nothing over costs
    no model built."""
    if old is None:
        return set()  # a new order has handed nothing over: a parcel leaves by a change of a stored one
    before = {s.get("id"): s.get("status") for s in old.get("shipments") or ()}
    return {
        s["id"] for s in new.get("shipments") or ()
        if s.get("status") in HANDED_OVER and before.get(s["id"]) not in HANDED_OVER
    }  # fmt: skip


def _declined_count(refused: set[str], order_id: str, lapsed: str) -> int:
    """How many renewals of `lapsed` were declined (`refused`: refused_keys): the next one's key."""
    before = 0
    while payment_keys.renewal(order_id, lapsed, before) in refused:
        before += 1
    return before


def _old_at(order: Order, valid_for: timedelta, now: datetime) -> datetime | None:
    """When the order's authorization is old, if a capture on it was refused (or given back) and it
    is not old yet: a renewal for that is asked once, its decline answering until then."""
    spent = order.payment.authorization in order.spent_authorizations and not order.authorization_old(valid_for, now)
    return (order.authorized_at or order.created_at) + valid_for if spent else None


def _declined_amount(history: list[HistoryEntry], key: str) -> dict | None:
    """The amount (as the history keeps it) the gateway last declined to authorize under `key`."""
    return next(
        ((entry.detail or {}).get("amount") for entry in reversed(history)
         if entry.type is OrderEvent.PAYMENT_AUTHORIZATION_FAILED and (entry.detail or {}).get("kind") == "refused"
         and (entry.detail or {}).get("authorization_key") == key),
        None,
    )  # fmt: skip


def _dumped(amount: Money | None) -> dict | None:
    return amount.model_dump(mode="json") if amount is not None else None


def _renewal_declined(order: Order, lapsed: str, message: str, **details: str) -> PaymentRefused:
    """What a ship or collect whose renewal of `lapsed` the gateway declined (`message`) raises:
    502 `payment_gateway_error`, as a refused capture (`details`: when it is asked again)."""
    spent = lapsed in order.spent_authorizations
    why = "a capture on the authorization was refused" if spent else "the authorization had grown old"
    refused = f"{why} and the gateway declined it again: {message}"
    return PaymentRefused("capture", refused, details=[{"operation": "authorize", **details}] if details else None)


def _decline_standing(
    history: list[HistoryEntry], order: Order, lapsed: str, before: int, actor: str, amount: Money | None,
    now: datetime, until: datetime | None = None,
) -> list[PaymentRefused]:  # fmt: skip
    """The decline that answers `actor`'s ship, collect or settlement asking again for the renewal of `lapsed`
    (of `amount`), without asking the gateway or writing anything: the one it was last given, of
    the same amount, in the run of declined renewals the history ends with (a carrier's
    delivery_not_recorded and a settlement's capture not made stepped over), while it stands
    (_stands_until: a day, doubled for each decline of the actor's before it in the run; or until
    `until`: a renewal for a refused capture, asked once, until the authorization is old). None
    (an empty list) when the gateway is asked: by another caller (once each), after anything else
    was written (a person's hold and release, an edit, a jeopardy mark, a capture), for another
    amount, or once that time is up (under a new key: payment_keys.renewal; a settlement's under
    the key it was declined under, its decline written anew: _renew). `before`: the renewals of
    `lapsed` declined so far."""
    declines = _actors_declines(history, order.id, lapsed, before, actor)
    if not declines or declines[0][1].detail.get("amount") != _dumped(amount):
        return []
    last = declines[0][1]
    until = _stands_until(declines, until)
    if now >= until:
        return []
    message = str(last.detail.get("message") or "the payment was declined")
    return [_renewal_declined(order, lapsed, message, declined_at=utc_text(last.at),
                              asked_again_after=utc_text(until))]  # fmt: skip


def _actors_declines(
    history: list[HistoryEntry], order_id: str, lapsed: str, before: int, actor: str
) -> list[tuple[int, HistoryEntry]]:
    """`actor`'s declined renewals of `lapsed` in the run of declines the history ends with
    (_trailing_declines), newest first, each with how many renewals of it were declined before the
    key it was asked under (payment_keys.renewal). `before`: the renewals of `lapsed` declined so far."""
    keys = {payment_keys.renewal(order_id, lapsed, n): n for n in range(before)}
    return [
        (keys[entry.detail["authorization_key"]], entry) for entry in _trailing_declines(history)
        if entry.actor == actor and entry.detail.get("authorization_key") in keys
    ]  # fmt: skip


def _died_asking_again(
    history: list[HistoryEntry], refused: set[str], order: Order, actor: str, now: datetime, valid_for: timedelta
) -> list[str]:
    """When `actor`'s decline stood until (ASKED_AGAIN), when the renewal standing on `order` is the
    settlement's ask of it again under its key, for its amount, once it stood (_renew), whose
    function died before the gateway's answer was written: asked again, that decline is written as
    the one asked again, not taken for the first's repeat (which would leave the first standing
    over, and the next report asking once more). [] otherwise (`refused`: refused_keys)."""
    lapsed = order.renewing_authorization or ""
    before = _declined_count(refused, order.id, lapsed)
    declines = _actors_declines(history, order.id, lapsed, before, actor)
    if not declines or declines[0][0] != order.renewal_declined_before:
        return []
    if declines[0][1].detail.get("amount") != _dumped(_renewal_amount(order)):
        return []
    until = _stands_until(declines, _old_at(order, valid_for, now))
    return [utc_text(until)] if now >= until else []


def _stands_until(declines: list[tuple[int, HistoryEntry]], until: datetime | None = None) -> datetime:
    """Until when the newest of an actor's declines in a row (_actors_declines) answers its repeats:
    DECLINED_RENEWAL_STANDS_FOR after it, doubled for each decline before it in the row, or `until`."""
    return until or declines[0][1].at + DECLINED_RENEWAL_STANDS_FOR * 2 ** (len(declines) - 1)


def _asked_again(entry: HistoryEntry) -> bool:
    """Whether `entry` is a settlement's decline asked again once the one it repeats stood (ASKED_AGAIN)."""
    detail = entry.detail or {}
    return detail.get("kind") == "refused" and ASKED_AGAIN in detail


def _trailing_declines(history: list[HistoryEntry]) -> list[HistoryEntry]:
    """The declined authorizations the history ends with, newest first (a carrier's
    delivery_not_recorded, a settlement's capture not made and an attempt under a declined key
    stepped over: answers_known)."""
    run: list[HistoryEntry] = []
    for entry in reversed(answers_known(history)):
        if entry.type is OrderEvent.DELIVERY_NOT_RECORDED or _settlement_not_made(entry):
            continue
        if entry.type is not OrderEvent.PAYMENT_AUTHORIZATION_FAILED or (entry.detail or {}).get("kind") != "refused":
            break
        run.append(entry)
    return run


def own_authorization_keys(order: Order) -> list[str]:
    """The keys the order's own authorization may have been asked under (Order.authorization_versions).
    None for an open order whose priced version owes nothing (a free order, or a replacement its
    credit pays for): AuthorizePayment asks no gateway for it, so nothing can be held under its key,
    and looking it up would only ask the gateway about an order it never saw (and, behind a plugin
    without oms_payment_find_authorization, warn of a hold that cannot exist). A closed order's
    totals are zero: whether it owed anything is its closing entry's to say (owed_when_cancelled)."""
    if order.status not in TERMINAL and order.priced_version is not None and order.payable().amount <= 0:
        return []
    return [payment_keys.authorize(order.id, version) for version in order.authorization_versions()]


def owed_when_cancelled(order: Order, found: tuple[Order, list[HistoryEntry]] | None) -> Money | None:
    """What the cancelled order owed as it was priced when it was cancelled (its `cancelled` entry's
    old grand total, less an exchange's credit, never below zero), from `found` (its history); None
    when that cannot be told: an order stored before `priced_version` (each attempt was keyed by
    the version it read, priced as it then was), or no such entry."""
    if order.priced_version is None or found is None:
        return None
    closing = next((e for e in reversed(found[1]) if e.type is OrderEvent.CANCELLED), None)
    total = ((closing.detail or {}).get("grand_total") or {}).get("from") if closing is not None else None
    if not isinstance(total, dict):
        return None
    owed = Money.model_validate(total)
    if order.usable_credit is not None:
        owed = owed - order.usable_credit
    return owed if owed.amount > 0 else Money.zero(order.currency)


def _authorization_keys(history: list[HistoryEntry]) -> tuple[dict[str, Money], set[str], set[str]]:
    """{idempotency key: amount} of the authorization attempts whose answer was lost (transient
    failures, and those whose payment plugin failed, kind `plugin_error`: it may have raised, or
    answered malformed, after the gateway approved) and that nothing settled since; the keys
    settled (a void recorded for the key, a refusal of it: not an attempt no payment plugin took,
    kind `no_plugin`, nor one whose plugin failed); and the keys a question about, or the void of
    what it found, failed for (_release_unrecorded)."""
    lost: dict[str, Money] = {}
    settled: set[str] = set()
    unfound: set[str] = set()
    for entry in history:
        detail = entry.detail or {}
        key = detail.get("authorization_key")
        if not isinstance(key, str):
            continue
        failed = entry.type is OrderEvent.PAYMENT_AUTHORIZATION_FAILED
        if failed and detail.get("kind") in LOST_ANSWERS and isinstance(detail.get("amount"), dict):
            lost.setdefault(key, Money.model_validate(detail["amount"]))
        elif failed and detail.get("kind") == "no_plugin":
            continue  # nobody asked the gateway (NoPaymentPlugin): the key waits for the plugin
        elif failed or entry.type is OrderEvent.PAYMENT_VOIDED:
            settled.add(key)
        elif entry.type is OrderEvent.PAYMENT_VOID_FAILED:
            unfound.add(key)
    return {key: amount for key, amount in lost.items() if key not in settled}, settled, unfound


def _voided(history: list[HistoryEntry], authorization: str) -> bool:
    """Whether the history notes `authorization` voided (a `payment_voided` naming it)."""
    return any(
        entry.type is OrderEvent.PAYMENT_VOIDED and (entry.detail or {}).get("authorization") == authorization
        for entry in history
    )


def _void_failed_authorizations(history: list[HistoryEntry]) -> dict[str, str]:
    """{idempotency key: authorization} of the failed voids that name both: what the gateway made
    under the key, which a void could not release (void_unrecorded, _release_unrecorded)."""
    named: dict[str, str] = {}
    for entry in history:
        detail = entry.detail or {}
        key, authorization = detail.get("authorization_key"), detail.get("authorization")
        if entry.type is OrderEvent.PAYMENT_VOID_FAILED and isinstance(key, str) and isinstance(authorization, str):
            named[key] = authorization
    return named


def voids_refused(history: list[HistoryEntry]) -> set[str]:
    """The authorizations whose void the gateway refused (not one no payment plugin took)."""
    return {
        entry.detail["authorization"] for entry in history
        if entry.type is OrderEvent.PAYMENT_VOID_FAILED and (entry.detail or {}).get("kind") == "refused"
        and isinstance(entry.detail.get("authorization"), str)
    }  # fmt: skip


def _why_replaced(history: list[HistoryEntry], authorization: str) -> dict[str, str]:
    """The reason the void of `authorization`, which a renewal or an edit replaced, records: a
    renewal's (its `payment_authorized` entry names what it replaces) says why it was renewed; an
    edit's is Order.record_replaced_voided's own."""
    renewal = next((entry for entry in reversed(history) if entry.type is OrderEvent.PAYMENT_AUTHORIZED
                    and (entry.detail or {}).get("replaces") == authorization), None)  # fmt: skip
    if renewal is None:
        return {}
    return {"reason": f"replaced by its renewal: {renewal.detail.get('reason')}"}


def _renewal_amount(order: Order) -> Money:
    """What the renewal standing on `order` asks the gateway to authorize (Order.renewal_amount);
    on an order stored while renewing before that existed, what the authorization has left to
    capture, as it was computed then."""
    return order.renewal_amount or order.payment.authorized - order.payment.captured


def _first_to_retry(failed: list[Exception]) -> Exception:
    """What a release that failed more than once raises: the gateway unavailable (or no plugin
    loaded, which recorded nothing) first, so a caller that retries later (a workflow step, a
    client) does; otherwise the first refusal or plugin failure."""
    return next((f for f in failed if isinstance(f, PaymentGatewayUnavailable | PluginUnavailable)), failed[0])


def _waiting(order: Order, shipment_id: str) -> bool:
    request = order.capture_request(shipment_id)
    return request is not None and not request.withdrawn
