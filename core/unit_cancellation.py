"""Cancel units that have not shipped: priced again, their stock released, the payment settled to the new total."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from core import payment_keys
from core.cancellation import (
    NOT_MADE,
    Cancellation,
    by_hand_over,
    holding_locations,
    leaving_moves,
    voids_refused,
    written_off_at,
    written_off_stock,
)
from core.carrier_bookings import CarrierBookings, CarrierWork, give_up_unrecorded
from core.errors import (
    Conflict,
    InvalidRequest,
    InvalidTransition,
    NoPaymentPlugin,
    NotFound,
    OutOfStock,
    PaymentRefused,
    StaleVersion,
    refused_as_kept,
)
from core.events import OrderEvent
from core.exchange_credit import beyond_credit, owes_credit_back
from core.holds import give_back_or_note, give_back_surplus
from core.ids import KEY_HONOURED_FOR, booking_key, reservation_key
from core.models import (
    Change,
    GivenUpBooking,
    HistoryEntry,
    LineInput,
    Order,
    OrderLine,
    PaymentInput,
    PlaceOrder,
    PromotionGrant,
    Totals,
    is_pick_slip,
)
from core.money import AmountTooLarge, Money
from core.order_changes import (
    ATTEMPTS,
    First,
    Recorder,
    failure_recorder,
    modify,
    refusal_noted_once,
    visible,
)
from core.payments import Payments
from core.ports import (
    CatalogRepository,
    InventoryRepository,
    LabelStore,
    OrderRepository,
    ReturnRepository,
    StockMove,
)
from core.refund_service import RefundService, returns_shown, show_refunded_in_all
from core.refunds import (
    KEPT_BACK_REFUSALS,
    kept_back_owed,
    kept_back_refusals,
    left_to_a_person,
    payment_holds,
)
from core.services import CaptureService, raised_since
from core.status import NOT_LEFT, OrderStatus, RefundStatus, ShipmentStatus
from core.workflow_types import CarrierShipment, book_parcel, stored_label

if TYPE_CHECKING:
    from core.exchange_credit import ExchangeCredits

S = OrderStatus
# How many refusals of the refund of what a return kept back a ship, a delivery or a cancel (each
# repeated at will: a carrier reports a delivery again and again) leave before they stop asking it:
# one fewer than the reconciler's, so that its kept-back pass asks the last time and, refused, calls
# a person (core.refund_service.KeptBackSweep), and a loop adds at most that many failed refunds.
ASKED_BEFORE_THE_RECONCILER = KEPT_BACK_REFUSALS - 1
# Where a cancel of "everything not shipped" has nothing left to cancel but may have left its
# clean-up unfinished (stock, payment): repeating it finishes that. Units back on returns before
# the rest was cancelled leave the order partially_returned or returned instead.
_FINISHED = frozenset({S.SHIPPED, S.DELIVERED, S.PARTIALLY_RETURNED, S.RETURNED})
# The reason of a cancellation refund: what was captured beyond the total a cancel of units left.
SETTLEMENT_REASON = "units cancelled after their share was captured"


class UnitCancellation:
    """`POST /orders/{id}/cancel`: the whole order before anything shipped (Cancellation), or units.

    Units are cancelled in one conditional write (lines, totals priced again as for an edit, the
    shipments that have not left (pending, or a pickup waiting at its store) and allocations
    shrunk, the status moved on when nothing is left to ship); only then is a pending parcel left
    with fewer units booked again with the carrier (book_labels_due), the bookings the cancel gave
    up (an emptied parcel's, a shrunk one's first) cancelled with it (cancel_given_up), the
    reservations brought down to what those shipments still need, and the payment settled: what was captured beyond
    the new total is refunded (a refund of kind `cancellation`); once nothing is left to ship, a
    total left higher than the captures (a volume discount lost with the units) is captured and
    the rest of the authorization released. A cancel of `lines` that raises the total beyond what
    the authorization can still capture is refused (_beyond_authorization). Each part is
    idempotent, and repeating a cancel of the rest finishes whatever an interrupted one left (a
    pending refund, a failed settlement)."""

    def __init__(
        self,
        orders: OrderRepository,
        catalog: CatalogRepository,
        inventory: InventoryRepository,
        payments: Payments,
        capture: CaptureService,
        refunds: RefundService,
        cancellation: Cancellation,
        clock: Callable[[], datetime],
        credits: ExchangeCredits | None = None,
        *,
        hook: Any | None = None,
        labels: LabelStore | None = None,
        returns: ReturnRepository | None = None,
        void_failures: Recorder = failure_recorder,
    ):
        self._orders = orders
        # How a failed attempt at releasing the authorization's rest is recorded: as `cancellation`
        # records its own (a pass that asks every few minutes notes an outage once: outage_noted_once).
        self._void_failures = void_failures
        self._returns = returns
        self._hook = hook
        self._labels = labels
        self._bookings = CarrierBookings(orders, hook, clock) if hook is not None else None
        self._credits = credits
        self._catalog = catalog
        self._inventory = inventory
        self._payments = payments
        self._capture = capture
        self._refunds = refunds
        self._cancellation = cancellation
        self._clock = clock

    def cancel(
        self, order_id: str, reason: str, actor: str, *, lines: dict[str, int] | None = None,
        channel: str | None = None, request_key: str | None = None, confirms_parcels: bool = True,
        expected_version: int | None = None,
    ) -> Order:  # fmt: skip
        """`confirms_parcels`: the caller may release a hold (Cancellation.cancel: a cancel of a whole
        order held to confirm whether a parcel left is refused otherwise).
        `request_key` (a client's Idempotency-Key, scoped to its API key) is kept in the cancel's
        entry (`units_cancelled`, or `cancelled`): a retry of a request that wrote it (whose answer
        was never stored: its function died, or the idempotency record's write failed) answers the
        order instead of cancelling as many units again; other `lines` under the key are 409
        `idempotency_key_reused`. `expected_version` (the version the person cancelling read, their
        If-Match): an order at another is 409 `version_conflict`, judged in the decision the first
        write is conditional on (Order.check_seen), before any payment or stock is touched: nothing
        written. Not for a retry of the request its key names: its own cancel moved the version."""
        if request_key is not None:
            if lines is not None:
                replayed = self._replayed(order_id, reason, lines, request_key, actor, channel)
                if replayed is not None:
                    return replayed
            elif expected_version is not None and self._made_under(order_id, request_key, channel) is not None:
                expected_version = None  # cancelled by this request: its clean-up runs again, as a repeat's
        return self._cancel(order_id, reason, actor, lines, channel, request_key, confirms_parcels,
                            expected_version=expected_version)  # fmt: skip

    def _cancel(
        self, order_id: str, reason: str, actor: str, lines: dict[str, int] | None, channel: str | None,
        request_key: str | None, confirms_parcels: bool, *, overtaken: bool = False,
        expected_version: int | None = None,
    ) -> Order:  # fmt: skip
        """`cancel`, no earlier request under its key found: decided (the units' new version, the
        whole order's cancel, or only a repeat's settlement) and written by core.order_changes.modify,
        then the stock, the carrier and the payment after the write. `overtaken`: decided again once
        a parcel's ship overtook a cancel of everything not shipped (the rest is cancelled then)."""
        read: Order | None = None  # the version decided on last
        refused: Order | None = None  # the version these units' cancel was refused on, if the last decision was that
        settles_only = whole = False

        def decide(order: Order) -> Change | First | None:
            nonlocal read, refused, settles_only, whole
            read, refused = order, None
            order.check_seen(expected_version)  # before anything is settled, asked or written
            settles_only = (
                lines is None and order.status in _FINISHED and any(line.cancelled_quantity for line in order.lines)
            )
            whole = not settles_only and (
                (lines is None and order.status is not S.PARTIALLY_SHIPPED) or self._takes_everything(order, lines)
            )
            if settles_only or whole:
                return None
            try:
                cancelled = order.units_to_cancel(lines)
                # Refused before anything is asked of the gateway (a ship's capture request settled).
                order.check_units_spare_parcels(cancelled, writes_off=confirms_parcels)
            except (Conflict, InvalidRequest):
                refused = order
                raise
            if order.captures_requested:
                # A shipment being shipped (or whose ship died) keeps its lines: its capture is
                # refunded first, and the units are cancelled on the order as it is then. Only for a
                # cancel that is not refused (above), on a consistent read (First): a refused one
                # leaves that ship alone, and a plain read may predate the ship that makes it refused.
                return First(partial(self._cancellation.settle_capture_requests, order, actor))
            priced, totals, grants = self._priced(order, cancelled)
            if totals.grand_total > order.totals.grand_total:
                # Priced again, the units left would cost more than the order did (a promo code's
                # minimum, a volume price or a free-shipping threshold lost with the units): nobody
                # pays more for cancelling. They keep what they were sold at, the terms with them.
                priced, totals = kept_as_sold(order, cancelled)
                grants = None
            new, entry = order.cancel_units(cancelled, priced, totals, reason=reason, at=self._clock(), actor=actor,
                                            grants=grants, request_key=request_key if lines else None,
                                            writes_off=confirms_parcels)  # fmt: skip
            if _owes_back(new):
                new = new.owing_settlement()  # with the cancel: should this function die before giving it
            if not order.waits_for_stock() and not order.not_sourced() and not order.reserved_on_hold():
                new = new.owing_stock()  # with the cancel: should this function die before releasing it
            return new, entry

        # A refusal, or nothing to write here (the whole order's cancel makes its own write), is
        # decided again on a consistent read (modify), as an eventually consistent one may predate
        # the order's placing or its allocation. A cancel of the whole order reads
        # consistently from the first: whether it cancels the order or the rest of it turns on a
        # parcel having shipped, which a plain read may not show yet (the whole cancel it chose
        # would be refused, 409, where the rest is to be cancelled).
        try:
            new = modify(self._orders, order_id, decide, channel=channel, consistent=lines is None)
        except (Conflict, InvalidRequest):
            if refused is not None:
                self._record_settlement(refused, actor)
            raise
        assert read is not None
        if settles_only:
            return self._settle(new, actor)
        if whole:
            keyed = {"request_key": request_key} if request_key is not None else None
            try:
                # The version judged again in the cancel's own write: a change since this read is 409.
                cancelled_whole = self._cancellation.cancel(
                    order_id, reason, actor, channel=channel, detail=keyed, confirms_parcels=confirms_parcels,
                    writes_off=confirms_parcels, expected_version=expected_version,
                )  # fmt: skip
            except InvalidTransition:
                # A parcel's ship overtook the cancel of everything not shipped after its read:
                # what is not shipped is cancelled on the order as it is now (the rest), as the
                # contract cancels it on a partly shipped order; any other refusal stands.
                if lines is not None or overtaken or not self._shipped_since(read):
                    raise
                return self._cancel(order_id, reason, actor, lines, channel, request_key, confirms_parcels,
                                    overtaken=True, expected_version=expected_version)  # fmt: skip
            return self.cancel_given_up(cancelled_whole, actor)
        if read.status is S.BACKORDERED:
            # Sent back to be sourced: its restarted workflow reconciles the reservations, and
            # nothing was captured to settle.
            return new
        if read.reserved_on_hold():
            # Sent back to be sourced as an edit sends it: the bookings a CreateShipments that
            # failed made are given up, and cancelled with their carrier now, as an edit's are.
            return self._not_sourced_cancelled(self.cancel_given_up(new, actor), actor)
        if read.not_sourced() or read.waits_for_stock():  # a held one's workflow waits for its release
            return self._not_sourced_cancelled(new, actor)
        self.cancel_given_up(self.book_labels_due(new, actor), actor)
        return self._settle(new, actor)

    # --- A rejected parcel of a partly shipped order (OrderActions.reject) -----------------------
    def out_of_stock(self, order: Order, shipment_id: str, short: dict[str, int], *, at: datetime,
                     actor: str) -> Change:  # fmt: skip
        """`order`'s cancel of the `short` units (by line) of its pending parcel `shipment_id` no other
        location has, reason out_of_stock, priced again as a cancel of units prices them (never to
        more than the order cost: kept_as_sold) and taken from that parcel alone
        (Order.cancelling_first): for the reject's write (Order.reject_in_part), settled after it
        (settle_after_reject)."""
        staged = order.cancelling_first(shipment_id)
        priced, totals, grants = self._priced(staged, short)
        if totals.grand_total > order.totals.grand_total:
            priced, totals = kept_as_sold(staged, short)
            grants = None
        return staged.cancel_units(short, priced, totals, reason=OutOfStock.code, at=at, actor=actor, grants=grants)

    def _made_under(self, order_id: str, request_key: str, channel: str | None) -> tuple[Order, HistoryEntry] | None:
        """The order and the entry of a cancel (of units, or of the order) under `request_key` made
        within the key's KEY_HONOURED_FOR, if its history holds one."""
        found = self._orders.history(order_id, consistent=True)
        order = visible(found[0] if found else None, order_id, channel)
        assert found is not None
        since = self._clock() - KEY_HONOURED_FOR
        made = next(
            (entry for entry in found[1]
             if entry.type in (OrderEvent.UNITS_CANCELLED, OrderEvent.CANCELLED)
             and (entry.detail or {}).get("request_key") == request_key and entry.at > since),
            None,
        )  # fmt: skip
        return None if made is None else (order, made)

    @staticmethod
    def owing_after_reject(order: Order) -> Order:
        """The version a reject of a partly shipped order writes, recording the settlement owed when
        the units it cancelled leave one (as a cancel of units records it: _owes_back), so the
        reconciler's kept-back pass settles it should the function die before settle_after_reject."""
        return order.owing_settlement() if _owes_back(order) else order

    def settle_after_reject(self, order: Order, actor: str) -> Order:
        """After a reject of a partly shipped order's parcel was written (or sent again): the
        bookings it gave up (the rejected parcel's) cancelled with the carrier, what the parcel
        held at its location released (the stock step brings the order's reservations down to what
        its pending parcels need), and, when it cancelled units, the payment settled to the new
        total as after a cancel of units (_settle). Each part idempotent: a reject sent again
        finishes what a death left, and so does the reconciler's kept-back pass for what the write
        recorded owed (stock_owed, settlement_owed). Returns the order as it then is."""
        self.cancel_given_up(order, actor)
        return self._settle(self._current(order.id), actor)

    def _shipped_since(self, read: Order) -> bool:
        """Whether a parcel of `read` (the order a cancel decided on) shipped since: the order, read
        consistently, is partly shipped now."""
        current = self._orders.get(read.id, consistent=True)
        return current is not None and current.status is S.PARTIALLY_SHIPPED and read.status is not S.PARTIALLY_SHIPPED

    def _not_sourced_cancelled(self, order: Order, actor: str) -> Order:
        """After units of an order not yet sourced were cancelled: nothing was captured to settle,
        and its workflow sources what is left (a ReserveStock that read it before loses its write
        and plans again). A held one that holds stock (sent back to be sourced) gives back what its
        lines no longer want (give_back_surplus: its workflow waits for the release); an
        authorization an edit asked for and never recorded is voided, as after a cancel of
        allocated units (a failure is in the history, for the next change or the reconciler)."""
        if order.status is S.ON_HOLD and order.hold is not None and order.hold.resume_to is S.AUTHORIZED:
            inventory, catalog = self._inventory, self._catalog
            give_back_or_note(
                self._orders, order,
                lambda: give_back_surplus(inventory, order, holding_locations(order, catalog.list_locations())),
                at=self._clock(), actor=actor,
            )  # fmt: skip
        with contextlib.suppress(*NOT_MADE):
            return self._cancellation.void_requested_authorization(order, actor)
        return self._current(order.id)

    def _record_settlement(self, order: Order, actor: str) -> None:
        """Record the settlement capture a cancel asked for and never recorded (it died after the
        gateway answered): it is owed whatever happens next, so a cancel refused records it all the
        same, as one that goes ahead does first (Cancellation.settle_capture_requests). A shipment's
        capture is left to its ship. A failure is in the history, and the refusal stands."""
        if order.capture_request(None) is None:
            return
        with contextlib.suppress(*NOT_MADE):
            self._cancellation.finish_settlement_capture(order, actor)

    def _replayed(
        self, order_id: str, reason: str, lines: dict[str, int], request_key: str, actor: str, channel: str | None
    ) -> Order | None:
        """The order, when a cancel under `request_key` made within the key's KEY_HONOURED_FOR is
        in its history (None: none is), with what that cancel does after its write done again, as
        a repeated cancel does it, unless the order has no shipment yet (pending, authorized or
        backordered, held or not: the workflow settles its stock then). One that named every
        unit cancelled the order: its clean-up (stock, the void) is run again as a repeated cancel
        of a cancelled order runs it."""
        found = self._made_under(order_id, request_key, channel)
        if found is None:
            return None
        order, made = found
        if (made.detail or {}).get("lines") != lines:
            raise Conflict(
                "this Idempotency-Key was used with a different request body",
                code="idempotency_key_reused",
                details=[{"field": "Idempotency-Key", "message": "reuse a key only to retry the same request"}],
            )
        if made.type is OrderEvent.CANCELLED:
            return self.cancel_given_up(self._cancellation.cancel(order_id, reason, actor, channel=channel), actor)
        # No shipment yet (held from such a status too: between ReserveStock and CreateShipments, or
        # waiting for stock): its workflow settles its stock, which a release down to what its
        # shipments need would free whole while the order still records it allocated. Not a
        # written-off parcel's units: they left with the carrier (release_owed), and leave on_hand
        # while that is owed, the record cleared in the same write (_stock_step).
        if _before_its_shipments(order):
            self._stock_step(order)
            return self._current(order_id) if order.stock_owed else order
        self.cancel_given_up(self.book_labels_due(order, actor), actor)
        return self._settle(self._current(order_id), actor)

    @staticmethod
    def _takes_everything(order: Order, lines: dict[str, int] | None) -> bool:
        """Cancelling every unit of an order before anything shipped cancels the order. `lines`
        that name a line the order lacks, or more units than a line has, are refused as
        units_to_cancel refuses them (InvalidRequest, 422), never taken for every unit."""
        if lines is None or order.status is S.PARTIALLY_SHIPPED:
            return False
        if not (
            order.ships_units_left() or order.waits_for_stock() or order.not_sourced() or order.reserved_on_hold()
            or order.reserved_unbooked()
        ):  # fmt: skip
            return False
        cancelled = order.units_to_cancel(lines)
        return all(cancelled.get(line.line_id, 0) == line.quantity for line in order.lines)

    def _priced(
        self, order: Order, cancelled: dict[str, int]
    ) -> tuple[dict[str, OrderLine], Totals, list[PromotionGrant]]:
        """The lines with units left, the order's totals and what its codes and the plugins' rules
        grant the units left (PricedOrder.grants: units an edit adds back later are bought at that
        day's terms, not at those of the units cancelled), priced again as an edit prices them,
        but for the unit prices: a sku keeps the one it was sold at unless the plugins price its
        new quantity differently from its old one (a volume price lost with the units). What the
        catalog says today is no reason to charge more, or less, for units already sold (nor is a
        promotion ended or changed since: its code keeps what it granted the order, Pricing.price).
        So with the shipping: it keeps what the order was charged unless the plugins quote the order
        left differently from the order as it was (a per-unit charge, a weight band), and never more
        than that charge for a rate or a weight raised since (core.services.raised_since)."""
        kept = [(line, line.quantity - cancelled.get(line.line_id, 0)) for line in order.lines]
        kept = [(line, quantity) for line, quantity in kept if quantity > 0]
        cmd = self._command(order, [(line.sku, quantity) for line, quantity in kept])
        try:
            now = self._capture.price(cmd, of=order)
            before = self._capture.price(self._command(order, [(line.sku, line.quantity) for line in order.lines
                                                               if line.quantity]), of=order)  # fmt: skip
        except AmountTooLarge:
            # Today's prices take the order as it was, or the units left, to 10^15: unable to ask
            # whether the plugins price the units left otherwise, they keep what they were sold at.
            now = before = None
        if now is None or before is None:
            sold = {line.sku: line.unit_price for line, _ in kept}
        else:
            asked_before = {line.sku: line.unit_price for line in before.lines}
            sold = {
                line.sku: line.unit_price
                for line, price in zip((line for line, _ in kept), now.lines, strict=True)
                if price.unit_price == asked_before.get(line.sku)
            }
        priced = self._capture.price(cmd, sold, of=order) if sold or now is None else now
        totals, charged = priced.totals, order.totals.shipping
        same_quote = (
            now is not None
            and before is not None
            and (
                now.totals.shipping == before.totals.shipping
                or raised_since(before.totals.shipping, charged, totals.shipping)
            )
        )
        if same_quote and totals.shipping != charged:
            totals = Totals(
                subtotal=totals.subtotal, discount=totals.discount, shipping=charged, tax=totals.tax,
                grand_total=totals.grand_total - totals.shipping + charged,
            )  # fmt: skip
        lines = {line.line_id: price for (line, _), price in zip(kept, priced.lines, strict=True)}
        return lines, totals, priced.grants

    @staticmethod
    def _command(order: Order, lines: list[tuple[str, int]]) -> PlaceOrder:
        try:
            return PlaceOrder(
                channel=order.channel, external_id=order.external_id, currency=order.currency, customer=order.customer,
                lines=[LineInput(sku=sku, quantity=quantity) for sku, quantity in lines],
                shipping_address=order.shipping_address, fulfillment=order.fulfillment,
                shipping_method=order.shipping_method if order.fulfillment.type == "ship" else None,
                promo_codes=order.promo_codes, payment=PaymentInput(method=order.payment.method, token="none"),
            )  # fmt: skip
        except ValidationError as error:
            raise refused_as_kept(error) from None  # priced as an edit prices it: its address edited first

    # --- After the write ------------------------------------------------------------------------
    def _settle(self, order: Order, actor: str) -> Order:
        """After a cancel of units: the stock released and the payment settled, and what returns
        kept back refunded as far as a settlement capture made it refundable (refund_kept_back:
        nothing ships after a cancel of the rest to do it). What the cancel owed back once given
        (or left to a person), the order no longer records it owed (Order.settlement_owed)."""
        # Its stock on the order as it is now, not as `order` (the version the cancel wrote, before
        # it called the carrier): a reject or an edit meanwhile may have sent it back to be sourced,
        # and what its workflow reserved since no shipment of `order` needs.
        self._stock_step(self._current(order.id))
        try:
            self._refunds.finish_pending(order.id, actor)
            self._settle_answered(self._current(order.id), actor)
            if self._credits is not None:  # a replacement left with nothing to ship, costing less than its credit
                self._give_back(self._current(order.id), actor)
            if order.settlement_owed:
                self._owed_back_given(order.id)
        except NOT_MADE:
            pass  # each failed attempt is in the history (a plugin's failure too); repeating the cancel tries again
        return self.refund_kept_back(self._current(order.id), actor, refusals=ASKED_BEFORE_THE_RECONCILER)

    def _current(self, order_id: str) -> Order:
        """The order as this request's own writes left it: read consistently, since a plain read
        just after them may show it as it was (and what is decided or answered on it with it)."""
        return visible(self._orders.get(order_id, consistent=True), order_id, None)

    def release_owed(self, order: Order) -> Order:
        """The units a cancel of units freed and its function died before releasing
        (Order.stock_owed): the reconciler's kept-back pass brings the order's reservations down to
        what its shipments still need, as a repeat of the cancel would (each shrink or release
        conditional on what the reservation holds: never twice), clearing the record in the same write
        (_stock_step). An order
        back before its shipments since (pending, authorized or backordered, held or not) is left to
        its workflow, which settles its stock, as a keyed retry leaves it (_replayed); but for the
        units of a parcel a cancel wrote off, which left with their carrier whatever the order does
        next: they leave on_hand in every case (_stock_moves), never back on sale. Returns the
        order as it then is."""
        order = self._current(order.id)
        if not order.stock_owed:
            return order
        self._stock_step(order)
        return self._current(order.id)

    def _stock_step(self, order: Order) -> None:
        """What a cancel of units does to the stock of `order`, read consistently just before
        (_stock_moves): its reservations brought down to what its shipments still need, a
        written-off parcel's units out of on_hand while that is owed, and the record of stock owed,
        if any, cleared, all in one write with the order (OrderRepository.update_with_stock: the
        order's write, or, with nothing to record, a check of its status and version). So no move
        decided on this read lands once the order moved on: a reject or an edit that sent it back
        to be sourced, the workflow reserving again under the same keys (a release would free the
        new reservation: oversold), another pass finishing a write-off first (its ship would take
        the new reservation's units: undercounted). The write then changes nothing, and the step is
        decided again on the order read again, as when a reservation changed since it was read (a
        move is conditional on what its reservation held). Should the order keep changing for
        ATTEMPTS reads, the step is left: a cancel's record of it (stock_owed) stays for the
        reconciler's pass (release_owed), and a repeat of the cancel runs it again."""
        for _ in range(ATTEMPTS):
            moves = self._stock_moves(order)
            released = order.stock_released(at=self._clock())
            if not moves and released is None:
                return
            try:
                self._orders.update_with_stock(released[0] if released else None, order, [], moves)
                return
            except StaleVersion:  # the order moved on, or a reservation did (ReservationsChanged)
                order = self._current(order.id)

    def _stock_moves(self, order: Order) -> list[StockMove]:
        """What the stock step of `order` moves, from its reservations read consistently: each one
        held beyond what the order's shipments that have not left (pending, or a pickup waiting at
        its store) still need brought down to that (a cancelled one, emptied, needs none; one that
        left is not touched: its units leave on_hand with its ship); and, while `order` records the
        step owed (stock_owed: written with the write-off, cleared only with the step), the units
        of the parcels a cancel wrote off (Order.written_off) shipped: they left with their carrier,
        so they leave on_hand, as a ship's do, never back on sale, and no more than they carry (a
        reservation holding more gives the rest back in the same move: leaving_moves; none from
        on_hand when a stock take recorded since their carrier's report counted them gone:
        written_off_at). Those reservations are never
        released, owed or not, and not shipped once the step is done: the order may then be edited
        and sourced again at the parcel's location, under the same key (order and line), and a
        later step would take the new reservation's units. An order back before its shipments
        (pending, authorized or backordered, held or not: sent back to be sourced since the
        cancel) has only those units shipped; the rest is its workflow's, which counts them as its own.
        But one whose parcels its workflow is booking (Order.reserved_unbooked: that step reserves
        nothing more), or will book once released from a hold that landed since the cancel
        (Order.reserved_on_hold), needs what its allocations hold, the rest brought down to that."""
        written_off = written_off_stock(order)
        ships = written_off if order.stock_owed else {}
        booking = order.reserved_unbooked() or order.reserved_on_hold()
        before = _before_its_shipments(order) and not booking
        if before and not ships:
            return []
        keys: dict[tuple[str, str], list[str]] = defaultdict(list)
        if before:
            for sku, location_id, key in ships:
                keys[(sku, location_id)].append(key)
        else:
            locations = holding_locations(order, self._catalog.list_locations())
            for line in order.lines:
                for location_id in locations:
                    keys[(line.sku, location_id)].append(reservation_key(order.id, line.line_id))
        held = sorted(self._inventory.reservations(dict(keys)).items())
        handed = written_off_at(order)
        moves = [move for at, units in by_hand_over(ships, handed) for move in leaving_moves(units, dict(held), at)]
        if before:
            return moves
        sku_of = {line.line_id: line.sku for line in order.lines}
        needed: dict[tuple[str, str, str], int] = defaultdict(int)
        left: set[tuple[str, str, str]] = set()
        for allocation in order.allocations if booking else ():
            item = (sku_of[allocation.line_id], allocation.location_id, reservation_key(order.id, allocation.line_id))
            needed[item] += allocation.quantity
        for shipment in order.shipments:
            for line in shipment.lines:
                item = (sku_of[line.line_id], shipment.location_id, reservation_key(order.id, line.line_id))
                if shipment.status in NOT_LEFT:
                    needed[item] += line.quantity
                elif shipment.status is not ShipmentStatus.CANCELLED:  # a cancelled one holds nothing
                    left.add(item)
        return moves + [
            StockMove(*item, held=quantity, keep=needed.get(item, 0))
            for item, quantity in held
            if item not in left and item not in written_off and quantity > needed.get(item, 0)
        ]

    def cancel_given_up(self, order: Order, actor: str) -> Order:
        """Cancel with their carrier the bookings the order gave up (CarrierBookings). Returns the
        order as it then is."""
        if self._bookings is None or not order.bookings_to_cancel:
            return order
        if self._bookings.cancel_given_up(order, actor).settled:
            return self._current(order.id)
        return order

    def finish_carrier_work(self, order: Order, actor: str, down: set[str] | None = None) -> CarrierWork:
        """What the carrier is still owed for the order (the reconciler's CarrierWorkSweep): each
        parcel due a label booked again (book_labels_due), then each booking given up (those new
        labels' first ones too) cancelled, but for carriers `down` (CarrierBookings.cancel_given_up).
        A failure is returned, not noted in the history."""
        failed = self._book_due(order, actor)
        due = order.labels_due
        order = self._current(order.id)
        done = CarrierWork(
            relabelled=[shipment_id for shipment_id in due if shipment_id not in order.labels_due],
            failed=[f"booking of {shipment_id}: {message}" for shipment_id, message in failed.items()],
        )
        if self._bookings is not None:
            done.add(self._bookings.cancel_given_up(order, actor, down))
        return done

    def book_labels_due(self, order: Order, actor: str) -> Order:
        """Book again each pending parcel a cancel of units shrank (Order.labels_due), under the
        order's current booking key, and keep that booking's label, tracking number and service:
        the first booking shows the old contents and weight (and is given up: Order.bookings_to_cancel).
        The cancel is written first and stands whatever the carrier or the label store answers: a
        booking that fails leaves the shipment due, with the failure in the history
        (`label_booking_failed`), and the next cancel of units or ship of the order, or the
        reconciler's next pass (core.carrier_bookings), books it again (under the same key: a
        carrier idempotent by it answers the same booking). Returns the order as it then is."""
        failed = self._book_due(order, actor)
        for shipment_id, message in failed.items():
            self._note_booking_failed(order.id, shipment_id, message, actor)
        return self._current(order.id) if order.labels_due and self._hook is not None else order

    def _book_due(self, order: Order, actor: str) -> dict[str, str]:
        """Book again each pending parcel due a label (book_labels_due); the failures, by shipment."""
        if self._hook is None or self._labels is None:
            return {}
        due = [s for s in order.shipments if s.id in order.labels_due and s.status is ShipmentStatus.PENDING]
        if not due:
            return {}
        failed: dict[str, str] = {}
        locations = {location.location_id: location for location in self._catalog.list_locations()}
        products = self._catalog.get_products({line.sku for line in order.lines})
        sku_of = {line.line_id: line.sku for line in order.lines}
        for shipment in due:
            key = booking_key(shipment.id, order.rebookings)
            weight = sum((products[sku_of[item.line_id]].weight_grams or 0) * item.quantity for item in shipment.lines)
            try:
                booked = book_parcel(self._hook, order, shipment.id, key, locations[shipment.location_id],
                                     [item.model_copy() for item in shipment.lines], weight)  # fmt: skip
                label = stored_label(self._labels, booked, order.id, key)
            except Exception as failure:  # any: the cancel must stand, and the parcel stays due
                failed[shipment.id] = f"{type(failure).__name__}: {failure}"
                continue
            self._relabel(order.id, shipment.id, key, booked, label, actor)
        return failed

    def _relabel(
        self, order_id: str, shipment_id: str, key: str, booked: CarrierShipment, label: str, actor: str
    ) -> None:
        at = self._clock()
        # Refused (decided again on a consistent read) when a change since made another booking,
        # or none, the parcel's: another cancel of units, an edit, its ship.
        try:
            modify(
                self._orders, order_id,
                lambda current: current.relabel(
                    shipment_id, key, carrier=booked.carrier, service=booked.service,
                    tracking_number=booked.tracking_number, label_url=label, at=at, actor=actor,
                ),
            )  # fmt: skip
        except (InvalidTransition, NotFound, StaleVersion):
            if is_pick_slip(booked.carrier):
                return  # the OMS's own slip: no carrier to cancel it with
            # The parcel stays due, or is no longer: this booking is owed a cancel unless a retry
            # will ask for it again.
            made = GivenUpBooking(shipment_id=shipment_id, carrier=booked.carrier,
                                  tracking_number=booked.tracking_number, booking_key=key)  # fmt: skip
            give_up_unrecorded(self._orders, order_id, [made], self._clock)

    def _note_booking_failed(self, order_id: str, shipment_id: str, message: str, actor: str) -> None:
        at = self._clock()
        modify(
            self._orders, order_id,
            lambda current: current.noted(OrderEvent.LABEL_BOOKING_FAILED, at=at, actor=actor,
                                          detail={"shipment_id": shipment_id, "message": message[:500]}),
        )  # fmt: skip

    def _settle_payment(self, order: Order, actor: str, *, unless_refused: bool = False) -> None:
        """`unless_refused` (a delivery's): no void is asked that the gateway refused before
        (Cancellation.void_replaced_authorizations, _release_authorization)."""
        payment = order.payment
        if not payment.authorization:
            return
        # A settlement capture asked for by one that died before recording it is recorded first, and
        # the authorizations an edit or a renewal left (asked for and never recorded, or replaced)
        # are voided. One the gateway refuses to void (one it let lapse already) stays on the order
        # for the reconciler, the refusal in the history: it does not keep the payment from being
        # settled, nor the current authorization's rest from being released.
        order = self._cancellation.finish_settlement_capture(order, actor)
        voids = (
            self._cancellation.void_requested_authorization,
            partial(self._cancellation.void_replaced_authorizations, unless_refused=unless_refused),
        )
        for void in voids:
            try:
                order = void(order, actor)
            except NoPaymentPlugin:
                raise  # nothing else can be settled without the plugin either
            except PaymentRefused:
                order = self._orders.get(order.id, consistent=True) or order
        due = _due(order)
        # A pickup waiting at its store is still to be collected, and paid for then.
        nothing_to_ship = not _left_to_ship(order)
        if due.is_negative():
            self._refunds.issue_decided_refund(order.id, _over_capture, SETTLEMENT_REASON, actor, kind="cancellation")
        elif due.amount > 0 and nothing_to_ship:
            if order.capture_request(None) is None:  # one standing is asked again as it was
                order = self._cancellation.renewed_for_settlement(order, due, actor)
            self._cancellation.capture_settlement(order, due, actor)
        if nothing_to_ship:
            self._release_authorization(self._current(order.id), actor, unless_refused=unless_refused)
            # A renewal the last parcel's ship asked for and died (Order.renewing_authorization) is
            # no longer wanted: nothing is left to capture on it, and nothing will ship to record it.
            self._cancellation.release_renewal(order, actor)

    def _settle_answered(self, order: Order, actor: str, *, unless_refused: bool = False) -> None:
        """_settle_payment, a capture or release the gateway refused taken as answered: in the
        history (as a delivery leaves it), the refused void one a person acts on
        (VoidsNotMadeAlarm), so the settlement is no longer owed (Order.settlement_owed) and no
        pass asks it again. Raises PaymentRefused only while what the captures hold beyond the
        total is still to be refunded (the settlement's refund: asked again, until left to a
        person), and PaymentGatewayUnavailable and NoPaymentPlugin (no gateway's answer: nobody
        asked it; the record stays, for the kept-back pass). `unless_refused`: as _settle_payment."""
        try:
            self._settle_payment(order, actor, unless_refused=unless_refused)
        except NoPaymentPlugin:
            raise
        except PaymentRefused:
            if _over_capture(self._current(order.id)) is not None:
                raise

    def after_shipping(self, order: Order, actor: str, *, delivered: bool = False) -> Order:
        """Once the last parcel of an order that lost units has shipped, the payment is settled to
        its total: a capture that paid for units cancelled while it was being made is refunded
        (or a total the captures fell short of is captured), and what the authorization holds
        beyond the captures is released; so is it for an order edited to a smaller total (an edit
        keeps the larger authorization), and an authorization an edit asked for and never recorded,
        or replaced and could not void then, is voided. An exchange's replacement, once it can no
        longer grow, gives back the credit its total does not use, once nothing captured beyond
        its total is left to refund (a settlement refund refused is asked again first). A refund still pending (the
        gateway was down when a cancel asked for it) is asked for again first, as a cancel repeated
        would. A parcel still pending that a cancel of units left due a label is booked first
        (book_labels_due), and the bookings the order gave up are cancelled (cancel_given_up).
        After any parcel, what returns' refunds kept back for want of captured money is refunded
        as far as its capture makes it refundable (refund_kept_back). `delivered`: called for a
        delivery reported, which asks no void the gateway refused before (the settling ship's or
        cancel's: under the same key the gateway answers the same refusal, and a second entry would
        call the person VoidsNotMadeAlarm called already; a void it was down for is asked again).
        Returns the order as it then is."""
        order = self.cancel_given_up(self.book_labels_due(order, actor), actor)
        if _left_to_ship(order):
            return self.refund_kept_back(order, actor, refusals=ASKED_BEFORE_THE_RECONCILER)
        # A failure is in the history; repeating the ship (or a cancel of what is left) tries again.
        with contextlib.suppress(*NOT_MADE):
            if any(refund.status == RefundStatus.PENDING for refund in order.payment.refunds):
                self._refunds.finish_pending(order.id, actor)
                order = self._current(order.id)
            payment = order.payment
            asked = order.authorization_requested is not None or bool(order.replaced_authorizations)
            if any(line.cancelled_quantity for line in order.lines) or payment.captured < payment.authorized or asked:
                self._settle_answered(order, actor, unless_refused=delivered)
                order = self._current(order.id)
            if self._credits is not None and order.exchange_credit is not None:
                self._give_back(order, actor)
            if order.settlement_owed:  # never on the typical order: a cancel of units, or a credit, sets it
                self._owed_back_given(order.id)
                order = self._current(order.id)
        return self.refund_kept_back(order, actor, refusals=ASKED_BEFORE_THE_RECONCILER)

    def settle_owed(self, order: Order, actor: str) -> Order:
        """What a cancel of units (or a replacement's last ship or collect) owed back and its
        function died before giving (or the gateway refused, or was down for): the reconciler's
        kept-back pass, for an order recording it (Order.settlement_owed), does what a repeat of
        the cancel (or of that ship or collect) would for the money: a refund
        left pending is asked again, what the captures hold beyond the total refunded (under the
        settlement's keys, decided on the order as written: never twice), an order left nothing to
        ship has what its captures fall short of its total captured and the rest of its
        authorization released (_settle_payment: a refusal of either is in the history, as a
        delivery leaves it, and not asked again by every pass), and a replacement left
        nothing to ship gives back the credit it does not use (under the give-back's keys). Once
        that is done, or left to a person (OVER_CAPTURE_REFUSALS refusals), the record is cleared;
        until then the order stays in the pass's index, asked again a pass later. Returns the
        order as it then is. Raises PaymentGatewayUnavailable (nothing recorded as moved, the
        record kept) when the gateway stays down for any of it, a refund, capture or void, and
        NoPaymentPlugin (nobody asked the gateway, the record kept) when no payment plugin takes
        the order's method: the pass asks that method's gateway no more, and reports the second
        (core.refund_service.KeptBackSweep)."""
        try:
            self._refunds.finish_pending(order.id, actor)
            # As the cancel's function would: the refund, or a capture short of the total, and a release.
            self._settle_answered(self._current(order.id), actor)
            if self._credits is not None:
                self._give_back(self._current(order.id), actor)
            self._owed_back_given(order.id)
        except NoPaymentPlugin:
            raise
        except PaymentRefused:
            pass  # in the history; asked again later
        return self._current(order.id)

    def _owed_back_given(self, order_id: str) -> None:
        """The order no longer records a cancel of units owing money back (Order.settlement_owed)
        once nothing captured beyond its total is left to refund (_over_capture: refunded, or left
        to a person); called once a replacement's credit was given back (the gateway answered it)."""
        at = self._clock()
        modify(
            self._orders, order_id,
            lambda current: current.settlement_done(at=at) if _over_capture(current) is None else None,
            consistent=True,
        )  # fmt: skip

    def _give_back(self, order: Order, actor: str) -> None:
        """What of a replacement's credit it does not use, given back (ExchangeCredits.give_back),
        but not while the settlement's refund of what was captured beyond its total is still owed
        (the gateway refused it): the credit counts what the replacement's payment holds as paid,
        and would give that back too before the settlement, asked again, refunds it."""
        assert self._credits is not None
        if _over_capture(order) is None:
            self._credits.give_back(order, actor, owed_back=held_beyond_total(order))

    def refund_kept_back(self, order: Order, actor: str, *, refusals: int | None = None) -> Order:
        """Refund what the order's returns' refunds, and its exchanges' credits, kept back of the
        returned units' worth (PaymentRefund.kept_back, Order.returns_kept_back: captured minus
        refunded fell short of it, an appeasement having taken part of what the units were captured
        for while another parcel was still to be captured), as far as the captures since make it
        refundable: the customer ends with the appeasement and the units' whole worth, as when that
        parcel had shipped first. Decided on the order as it is written, under a key of its own
        (core.refunds.kept_back_owed): one left pending is asked again under its key; what one the
        gateway refused, or one that gave part (a capture short of what was kept back), leaves is
        asked under a new key by the next ship or delivery (while refused fewer than
        ASKED_BEFORE_THE_RECONCILER times), or else by the reconciler's kept-back pass
        (core.refund_service.KeptBackSweep). An exchange's is refunded once
        its replacement is placed (never given up for a refund that decides it again), and names no
        return (the exchange's credit counts that return's refunds as drawn on it), but the return
        shows it. The returns the order records as owing a show (Order.returns_to_show: a refund
        the gateway answered that the function recording it died before showing) show it too, and
        the record is cleared. Nothing is read or written for an order that kept nothing back and
        owes no show. `refusals`: what the gateway refused that
        many times already is not asked again (the reconciler's pass left it to a person). Returns
        the order as it then is."""
        owed = [
            entry for entry in kept_back_owed(order)
            if refusals is None or kept_back_refusals(order, entry.key) < refusals
        ]  # fmt: skip
        if not owed and not order.returns_to_show:
            return order
        with contextlib.suppress(*NOT_MADE):  # in the history; asked again later
            for entry in owed:
                self._refunds.issue_decided_refund(
                    order.id, entry.decide, entry.reason, actor, kind="return", return_id=entry.names
                )
        order = self._current(order.id)
        shown = list(dict.fromkeys([*(entry.return_id for entry in owed), *order.returns_to_show]))
        for return_id in shown:
            self._show_refunded(order, return_id)
        return returns_shown(self._orders, order, shown, self._clock())

    def _show_refunded(self, order: Order, return_id: str) -> None:
        """The refunded return `return_id` shows what was refunded for it in all
        (core.refund_service.show_refunded_in_all), a plain return of a replacement's units what its
        exchange's credit refunded for it too. Nothing without the returns."""
        if self._returns is None:
            return
        elsewhere = (
            self._credits.drawn_for_return(order, return_id)
            if self._credits is not None and order.exchange_credit is not None and return_id not in order.exchanges
            else None
        )
        show_refunded_in_all(self._returns, order, return_id, self._clock(), elsewhere=elsewhere)

    def _release_authorization(self, order: Order, actor: str, *, unless_refused: bool = False) -> None:
        """Void what the authorization holds beyond the captures, and record it. `unless_refused`:
        not when the history records the gateway's refusal of that void (under the same key it
        answers the same): read only then, never for an order with nothing to release."""
        payment = order.payment
        authorization = payment.authorization
        if not authorization or not payment.captured < payment.authorized:
            return
        if unless_refused:
            found = self._orders.history(order.id, consistent=True)
            if found is not None and authorization in voids_refused(found[1]):
                return
        result = self._payments.retried(
            "void",
            lambda attempt: self._payments.void(
                payment.method, authorization, order.id, payment_keys.void(authorization)
            ),
            refusal_noted_once(
                self._orders, order.id, actor, self._clock, recorder=self._void_failures, authorization=authorization
            ),
        )
        at = self._clock()
        modify(
            self._orders, order.id,
            lambda current: current.release_authorization(
                result.reference, at=at, actor=actor, settled=_owes_nothing(current)
            )
            if current.payment.authorization == authorization and current.payment.captured < current.payment.authorized
            else None,
        )  # fmt: skip


def _before_its_shipments(order: Order) -> bool:
    """Whether the order is back before its shipments (pending, authorized or backordered, held
    from one of those or not): its workflow settles its stock from there."""
    resumes_to = order.hold.resume_to if order.status is S.ON_HOLD and order.hold is not None else order.status
    return resumes_to in (S.PENDING, S.AUTHORIZED, S.BACKORDERED)


def kept_as_sold(order: Order, cancelled: dict[str, int]) -> tuple[dict[str, OrderLine], Totals]:
    """The lines with units left once `cancelled` ({line_id: units}) go, and the order's totals, as
    they were sold: each keeps its unit price, and its discount and its tax in proportion to the
    units left (each rounded half-even: neither can go below zero, as a total's share less a
    rounded discount could), its total what those make; the shipping as charged. So the cancelled
    units come off at their share of their lines' totals (to the cent a return's share rounds
    otherwise), and the order never costs more than it did. A cancel whose repricing would raise
    the total takes these instead."""
    currency = order.currency
    lines: dict[str, OrderLine] = {}
    for line in order.lines:
        left = line.quantity - cancelled.get(line.line_id, 0)
        if not left:
            continue
        if left == line.quantity:
            lines[line.line_id] = line
            continue
        discount = Money.of(line.discount.amount * left / line.quantity, currency)
        tax = Money.of(line.tax.amount * left / line.quantity, currency)
        total = line.unit_price.times(left) - discount + tax
        lines[line.line_id] = line.model_validate(
            {**dict(line), "quantity": left, "discount": discount, "tax": tax, "total": total}
        )
    kept = list(lines.values())
    zero = Money.zero(currency)
    shipping = order.totals.shipping
    totals = Totals(
        subtotal=sum((line.unit_price.times(line.quantity) for line in kept), zero),
        discount=sum((line.discount for line in kept), zero), shipping=shipping,
        tax=sum((line.tax for line in kept), zero), grand_total=sum((line.total for line in kept), zero) + shipping,
    )  # fmt: skip
    return lines, totals


def held_beyond_total(order: Order) -> Money:
    """What the payment holds beyond what the order now costs, as far as it can still be refunded
    (zero when nothing is over): what the settlement refunds, or, refused, still owes (a return of
    an exchange's replacement leaves it to it: core.returns). No more than what is left to a person
    (core.refunds.left_to_a_person) is not capped so: it is owed whatever else took from what can be refunded
    (an exchange's credit would count the rest as paid by the card). The appeasement that gives it
    back lowers both what can be refunded and, as far as it gives back what the payment holds
    beyond the total (PaymentRefund.over_capture), what it holds (payment_holds): that part is
    never refunded again, however a later cancel raises what is held beyond the total."""
    over = payment_holds(order) - order.payable()
    left = left_to_a_person(order)
    if left is None or over > left:
        over = min(over, max(order.refundable(), Money.zero(order.currency)))
    return over if over.amount > 0 else Money.zero(order.currency)


def _owes_back(order: Order) -> bool:
    """Whether the order a cancel of units has just decided owes a settlement of its payment that
    only the function after its write does (Order.settlement_owed): a refund of what the captures
    hold beyond its new total, or, a replacement left nothing to ship, its credit's give-back; or,
    any order left nothing to ship, the capture of what its captures fall short of its total by or
    the release of what its authorization holds beyond them (_unsettled_with_nothing_to_ship)."""
    return _over_capture(order) is not None or owes_credit_back(order) or _unsettled_with_nothing_to_ship(order)


def owes_settlement_after_last_parcel(order: Order) -> bool:
    """Whether `order`, its last parcel just shipped or collected (nothing left to ship), owes a
    settlement of its payment that only the function after that write does
    (UnitCancellation.after_shipping), so the write records it owed (Order.settlement_owed) for
    the reconciler's kept-back pass, should that function die: what its captures hold beyond its
    total refunded, what they fall short of it captured, what its authorization holds beyond them
    released (an order that lost units, or an edit left authorized for more), a replacement's
    unused credit given back (_owes_back). Read in memory; False for the typical order, which
    captured its total and was authorized for no more, and for any order with a parcel still to go."""
    if _left_to_ship(order):
        return False
    return _owes_back(order)


def _left_to_ship(order: Order) -> bool:
    """Whether a parcel of the order is still to go: one that has not left (pending, or a pickup
    waiting at its store), or, none made yet, those its workflow is booking for the stock it
    reserved (Order.reserved_unbooked), or will book once released from a hold that landed
    between (Order.reserved_on_hold), which capture their shares when they ship."""
    return (
        order.reserved_unbooked()
        or order.reserved_on_hold()
        or any(shipment.status in NOT_LEFT for shipment in order.shipments)
    )


def _unsettled_with_nothing_to_ship(order: Order) -> bool:
    """Whether the order has nothing left to ship while its payment is not settled to its total:
    short of it (what the cancel's function captures: _settle_payment) or authorized beyond its
    captures (what it releases). Nothing ships or, for a parcel that left already, may be reported
    delivered to do either, should that function die."""
    payment = order.payment
    if not payment.authorization or _left_to_ship(order):
        return False
    return _due(order).amount > 0 or payment.captured < payment.authorized


def _due(order: Order) -> Money:
    """What the order's payment still owes of what it costs (negative: holds beyond it, to refund):
    what it is payable less what its captures hold, and of a replacement no more than its card
    pays beyond its credit (what the credit pays is not asked of the card)."""
    due = order.payable() - payment_holds(order)
    if order.exchange_credit is not None:
        due = min(due, beyond_credit(order))
    return due


def _owes_nothing(order: Order) -> bool:
    """Whether the order's payment, nothing left to ship, is settled to its total: its captures
    hold exactly what it costs (nothing to capture, nothing to refund: _settle_payment's `due`)."""
    return _due(order).amount == 0


def _over_capture(order: Order) -> tuple[str, Money] | None:
    """The next cancellation refund's key and amount: what the payment holds beyond what the order
    now costs, as far as it can still be refunded; None when nothing is over, or when it is no more
    than what the gateway refused OVER_CAPTURE_REFUSALS times in a row (left to a person)."""
    over = held_beyond_total(order)
    if over.amount <= 0:
        return None
    left = left_to_a_person(order)
    if left is not None and over <= left:
        return None
    settlements = [refund for refund in order.payment.refunds if refund.kind == "cancellation"]
    return f"{order.id}:cancellation:{len(settlements) + 1}", over
