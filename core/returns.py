"""Returns (RMA): request, approve or reject, label, receive, restock and record on the order.

Each step reads what is stored and skips what is done, so the returns workflow (and a repeated
request) can run any of them again: a receipt is one conditional write on the return, a restock is
keyed by return and line, and the order records a return's units once (Order.record_return).
A request, approval, rejection or expiry carries the order's history entry in the return's own
write (Return.order_entries); the order records each once (Order.return_noted), right after, and
again wherever that writer died first: a repeat of the step, the receipt's count on the order, or
the next read of the order's history (owed_entries)."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from core import order_lists
from core.carrier_bookings import CarrierBookings
from core.errors import (
    Conflict,
    DomainError,
    DuplicateOrder,
    InsufficientStock,
    InvalidRequest,
    KeptRefused,
    NoPrice,
    NoShippingMethod,
    NotFound,
    PaymentGatewayUnavailable,
    PaymentPluginFailed,
    PaymentRefused,
    PickupNotOffered,
    PluginError,
    StaleVersion,
    StockLimitReached,
    UnknownPaymentMethod,
    UnknownShippingMethod,
    UnknownSku,
    caught_message,
    is_own_error,
    refused_as_kept,
)
from core.events import OrderEvent
from core.exchange_credit import ExchangeCredits
from core.hook_calls import call_hook
from core.ids import KEY_HONOURED_FOR, order_id_for, short_hash
from core.models import (
    Bookkeeping,
    GivenUpBooking,
    HistoryEntry,
    Location,
    Order,
    PaymentInput,
    PlaceOrder,
    RefundedUnits,
    ShipmentLine,
    utc_now,
    utc_text,
)
from core.money import AmountTooLarge, Money
from core.order_changes import ATTEMPTS, modify, visible
from core.ports import (
    CatalogRepository,
    InventoryRepository,
    LabelStore,
    OrderRepository,
    ReturnFilter,
    ReturnRepository,
)
from core.refund_service import Decision, RefundService, owed_when_finished, show_owed
from core.refunds import (
    Refund,
    given_back_for_units,
    kept_back_owed,
    refund_due,
    refund_id_for,
    refunded_for_return,
    shipping_refunded,
    units_refunded,
    units_share,
)
from core.return_models import (
    ExchangeInput,
    OrderEntry,
    ReceiveReturn,
    RequestReturn,
    Return,
    ReturnLine,
    ReturnPolicyDecision,
)
from core.services import CaptureService
from core.sourcing import destination_of, distance_km
from core.status import UNRECEIVED_RETURNS, RefundStatus, ReturnStatus, ShipmentStatus
from core.unit_cancellation import held_beyond_total
from core.workflow_types import stored_label

R = ReturnStatus
Clock = Callable[[], datetime]

# Returns that no longer hold units of the order: what they asked for may be asked for again.
CLOSED = frozenset({R.REJECTED, R.CANCELLED})
RETURN_EXPIRED = "return_expired"


# What a refund's refusal says (RefundNotDone), read in a return_stuck entry after the retries too:
# what the workflow did, never a promise of another try (a refusal after them is a person's).
ASKED_AGAIN = "the returns workflow asks again under a new key while its retries last"


class RefundNotDone(DomainError):
    """The gateway refused a return's refund (recorded `failed` on the order): the workflow's Retry
    runs the refund step again, which asks under a new key."""

    code = "refund_not_done"


class ReturnNotReceived(Conflict):
    """A step after the receipt ran for a return that was not received (409 at the API)."""

    code = "return_not_received"


class ExchangeIdTaken(Conflict):
    """The external_id an exchange's replacement would take belongs to an order the channel placed
    itself: it is not the replacement, and no other id would be found again by a retried step."""

    code = "exchange_external_id_taken"


# Why a replacement can never be placed, whatever is retried: the shop's stock, prices (gone, or
# raised so far that its total reaches what an order records), shipping, payment methods or stores
# changed since the return was accepted, or the channel took its external_id. A business outcome,
# not an outage: the exchange is given up and its units refunded instead.
NOT_PLACEABLE = (
    InsufficientStock, ExchangeIdTaken, NoPrice, AmountTooLarge, NoShippingMethod, UnknownPaymentMethod,
    PickupNotOffered, KeptRefused,
)  # fmt: skip
KEPT_REFUSED = (
    "the replacement keeps the original's address and customer, which no longer pass today's rules "
    "(a return without an exchange refunds the units)"
)
PICKUP_NOT_OFFERED = "pickup_not_offered"
# An order is one DynamoDB item (400 KB at most) and each of its returns leaves its mark there: the
# refund, with what it gives back for each line (~9 KB of JSON for 100 lines, ~1.1 KB stored),
# its received id and entries. Shipped units bound returns only loosely (up to a million an order),
# so an order takes MAX_RETURNS, rejected and cancelled ones counted (their entries stay): as many
# as the largest order has lines, each returned on its own. Measured with the largest order, every
# return of all its lines and MAX_APPEASEMENT_BYTES of appeasements: tests/unit/test_aws_limits_order_item.py.
MAX_RETURNS = 100
# How long after a run found the replacement it was decided to place refused the exchange waits
# before giving it up (Returns._given_up_after_refusal): twice the returns step function's Timeout
# (10 s), within which a run that read the return before the refusal puts its replacement, and
# less than the Exchange step's retry of RefundNotDone (30 s later), which gives it up.
PUT_WINDOW = timedelta(seconds=20)


def return_id_for(order_id: str, ordinal: int) -> str:
    """A return's id, derived from its order and ordinal: two requests racing for the same ordinal
    race for the same id, and one conditional put lets only one of them have it."""
    return "rma_" + short_hash(f"{order_id}#return#{ordinal}")


def return_booking_key(return_id: str, destination_id: str, lines: Iterable[tuple[str, int]], weight_grams: int) -> str:
    """The key a return label is booked under (oms_carrier_return_label's `booking_key`): the
    return's id and a hash of the parcel booked (where it goes back to, its lines and units, in any
    order, and its weight). A return's id names its order's next ordinal, not a parcel: a request
    whose booking failed and is made again with other lines, or that lost the ordinal to a
    concurrent request, books under the same id with other contents, and a carrier keyed on the id
    would answer the first booking's label. A retry of the same parcel asks under the same key."""
    return f"{return_id}-{_parcel_hash(destination_id, lines, weight_grams)}"


def _parcel_hash(destination_id: str, lines: Iterable[tuple[str, int]], weight_grams: int) -> str:
    """What a return label's booking key adds to the return's id (return_booking_key), and what the
    return keeps of it (Return.booking): 16 characters."""
    parcel = "\x1e".join(f"{line_id}\x1f{quantity}" for line_id, quantity in sorted(lines))
    booked = "\x1f".join(["return-label", destination_id, parcel, str(weight_grams)])
    return short_hash(booked)[:16]


def label_booking(item: Return) -> GivenUpBooking | None:
    """The carrier booking of the label `item` shows, as a cancel names it; None without a label,
    or for one labelled before its key was kept."""
    key = item.label_booking_key()
    if key is None:
        return None
    return GivenUpBooking(
        shipment_id=item.id, carrier=item.carrier, tracking_number=item.tracking_number, booking_key=key
    )


def judged_labels(item: Return, unrecorded: list[GivenUpBooking]) -> tuple[list[GivenUpBooking], list[GivenUpBooking]]:
    """The order's return label bookings no return records (Order.unrecorded_return_labels) judged
    on return `item` as it now is: (those still kept, those given up: owed a cancel). Of those
    booked under its id, none while it waits for approval (approving asks again under the key of
    its parcel: a booking maybe made then is its label); all once it is rejected or cancelled
    (nothing asks under its id again); else all but the one whose label it shows, dropped. One it
    may show (labelled before keys were kept, the same tracking number) is never given up: a cancel
    of the label its customer holds would void it."""
    mine = [booking for booking in unrecorded if booking.shipment_id == item.id]
    if not mine or item.status is R.REQUESTED:
        return unrecorded, []
    kept = [booking for booking in unrecorded if booking.shipment_id != item.id]
    if item.status in CLOSED:
        return kept, mine
    return kept, [booking for booking in mine if not _may_show(item, booking)]


def _may_show(item: Return, booking: GivenUpBooking) -> bool:
    if item.label_url is None:
        return False
    same_label = booking.carrier is not None and booking.carrier == item.carrier
    if same_label and booking.tracking_number == item.tracking_number:
        return True
    key = item.label_booking_key()
    return key is None or key == booking.booking_key


def restock_key(return_id: str, line_id: str) -> str:
    return f"{return_id}#{line_id}"


def visible_return(item: Return | None, return_id: str, channel: str | None) -> Return:
    """Another channel's return answers exactly like a missing one (NotFound), as orders do."""
    if item is None or (channel is not None and item.channel != channel):
        raise NotFound(f"no return {return_id}")
    return item


def _check_room_for_a_return(order_id: str, earlier: list[Return]) -> None:
    """409 `too_many_returns` when the order has MAX_RETURNS returns already."""
    if len(earlier) < MAX_RETURNS:
        return
    raise Conflict(
        f"order {order_id} has {len(earlier)} returns, as many as an order takes (rejected and cancelled ones"
        " counted): return more units on each return",
        code="too_many_returns",
        details=[{"field": "lines", "message": f"order {order_id} takes no more returns"}],
    )


class Returns:
    def __init__(
        self,
        orders: OrderRepository,
        returns: ReturnRepository,
        catalog: CatalogRepository,
        inventory: InventoryRepository,
        labels: LabelStore,
        hook: Any,
        refunds: RefundService,
        clock: Clock = utc_now,
        capture: CaptureService | None = None,
    ):
        self._orders = orders
        self._capture = capture
        self._returns = returns
        self._catalog = catalog
        self._inventory = inventory
        self._labels = labels
        self._hook = hook
        self._refunds = refunds
        self._credits = ExchangeCredits(returns, refunds, orders, clock)
        self._bookings = CarrierBookings(orders, hook, clock)
        self._clock = clock

    # --- Reading ----------------------------------------------------------------------------
    def get(self, return_id: str, channel: str | None = None) -> Return:
        """The return; one a plain read does not find yet (its 201 a moment old: a read may
        predate its write) is looked for again consistently before it is NotFound."""
        found = self._returns.get(return_id) or self._returns.get(return_id, consistent=True)
        return visible_return(found, return_id, channel)

    def as_new_as(self, item: Return) -> Return:
        """The return as stored now, never an older version than `item` (a change just written): a
        plain read a moment after that write may still show the version before it, and an answer
        built on it would tell the caller its change was not made. Then it is read consistently."""
        found = self._returns.get(item.id)
        if found is None or found.version < item.version:
            found = self._returns.get(item.id, consistent=True)
        return found if found is not None and found.version >= item.version else item

    def for_order(self, order_id: str, channel: str | None = None) -> list[Return]:
        visible(self._orders.get(order_id), order_id, channel)
        return self._returns.for_order(order_id)

    def page_for_order(
        self, order_id: str, channel: str | None, limit: int, cursor: str | None
    ) -> tuple[list[Return], str | None]:
        """Up to `limit` of the order's returns, oldest first, after the one `cursor` names, and
        the cursor of the next page (None: no more). An order has few returns (each holds shipped
        units), so they are read whole and paged by position (returns are never removed);
        InvalidCursor for a cursor another order's list issued, or none issued."""
        return order_lists.page(self.for_order(order_id, channel), order_id, "returns", limit, cursor)

    def list(
        self, status: ReturnStatus | None, channel: str | None, limit: int, cursor: str | None
    ) -> tuple[list[Return], str | None]:
        return self._returns.list(ReturnFilter(status=status, channel=channel), limit, cursor)

    # --- Request ----------------------------------------------------------------------------
    def request(
        self, order_id: str, cmd: RequestReturn, actor: str, channel: str | None = None,
        request_key: str | None = None,
    ) -> Return:  # fmt: skip
        """A new return of shipped units, decided by the return policy: `requested` (waiting for a
        person) or `authorized` with a return label. More than shipped minus earlier returns is
        422; an order with nothing shipped is 409.

        `request_key` (a client's Idempotency-Key, scoped to its API key) is kept on the return: a
        retry of a request that made it (whose answer was never stored: it failed after, or its
        function died) answers that return, with the order's entry written if it was not, instead
        of making a second one (its exchange is not checked again: the shop may have priced it
        since); another request under the key is 409 `idempotency_key_reused`. Only
        within the key's 24 h (KEY_HONOURED_FOR): after them, a request under it is a new one."""
        order = visible(self._orders.get(order_id), order_id, channel)
        shipped = order.shipped_units()
        if any(line.quantity > shipped.get(line.line_id, 0) for line in cmd.lines):
            # A plain read may predate the ship of a moment ago: a refusal is decided on a consistent one.
            order = visible(self._orders.get(order_id, consistent=True), order_id, channel)
            shipped = order.shipped_units()
        if not any(shipped.values()):
            raise Conflict(f"order {order_id} has nothing shipped to return", code="nothing_shipped")
        exchange_checked = cmd.exchange is None
        for _ in range(ATTEMPTS):
            earlier = self._returns.for_order(order_id)
            # The key names one request for 24 h (API.md): a return made under it before is an earlier one.
            since = self._clock() - KEY_HONOURED_FOR
            keyed = [r for r in earlier if request_key is not None and r.request_key == request_key]
            made = next((r for r in keyed if r.created_at > since), None)
            if made is not None:
                return self._requested_again(made, cmd, order, actor)
            _check_room_for_a_return(order_id, earlier)
            if not exchange_checked:
                # Only for a return to make: a retry answers the one made, whatever the shop changed since.
                self._check_exchange(cmd, order)
                exchange_checked = True
            returned_before = _units_on(earlier)
            self._check_quantities(order, cmd, shipped, returned_before)
            now = self._clock()
            decision = self._decide(order, cmd, returned_before, now)
            ordinal = max((r.ordinal for r in earlier), default=0) + 1
            item = Return(
                id=return_id_for(order_id, ordinal),
                order_id=order_id,
                channel=order.channel,
                ordinal=ordinal,
                status=R.REQUESTED if decision.needs_approval else R.AUTHORIZED,
                lines=[
                    ReturnLine(
                        line_id=line.line_id, quantity=line.quantity, reason=line.reason, reason_code=line.reason_code
                    )
                    for line in cmd.lines
                ],
                refund=Money.zero(order.currency),
                fee=decision.fee or Money.zero(order.currency),
                refund_shipping=decision.refund_shipping,
                refund_shipping_with_whole_order=decision.refund_shipping_with_whole_order,
                return_to=return_destination(order, {x.line_id for x in cmd.lines}, self._catalog.list_locations()),
                exchange=cmd.exchange,
                request_key=request_key,
                authorized_at=None if decision.needs_approval else now,
                created_at=now,
                updated_at=now,
                version=1,
            )
            item = item.owing(OrderEvent.RETURN_REQUESTED, actor=actor, detail={
                "return_id": item.id, "status": item.status.value,
                "lines": [{"line_id": line.line_id, "quantity": line.quantity, "reason_code": line.reason_code}
                          for line in item.lines],
            })  # fmt: skip
            if item.status is R.AUTHORIZED:
                # Booked before the return is stored, so an authorized return never lacks the label
                # a failed booking would have left out; the booking is keyed by the return's id and
                # its parcel (return_booking_key): a request made again with other lines after a
                # failed booking, or counted again after losing its ordinal, asks under a new key.
                item = self._with_label(item, order, actor)
            try:
                self._returns.add(item)
            except StaleVersion:
                # Another return of this order took the ordinal: count again. The label booked
                # for it is that return's (the same parcel: the same key) or owed a cancel.
                self._label_unused(item, actor)
                continue
            except Exception:  # any: the write may have landed or not, the return stored decides
                self._label_unused(item, actor)
                raise
            break
        else:
            raise StaleVersion(f"returns of order {order_id} kept changing; retry")
        self._noted(item, actor, order)
        return item

    def _requested_again(self, made: Return, cmd: RequestReturn, order: Order, actor: str) -> Return:
        if not made.made_by(cmd):
            raise Conflict(
                "this Idempotency-Key was used with a different request body",
                code="idempotency_key_reused",
                details=[{"field": "Idempotency-Key", "message": "reuse a key only to retry the same request"}],
            )
        self._noted(made, actor, order)
        return made

    def _check_exchange(self, cmd: RequestReturn, order: Order) -> None:
        """The exchange's skus exist and the replacement, as it would be placed for `order` (the
        shop's default shipping when the original's method is no longer offered), passes the checks
        of POST /orders but stock's (checked when the replacement is placed, at receipt: units come
        back before it ships). One that could never be placed (a product with no price in the
        order's currency, no shipping service for it, a payment method or pickup store the shop no
        longer takes) is 422 now, before the customer sends anything back, with the error POST
        /orders would give."""
        assert cmd.exchange is not None
        if self._capture is None:
            message = "this OMS places no exchanges"
            raise InvalidRequest(
                message, code="exchange_not_supported", details=[{"field": "exchange", "message": message}]
            )
        lines = cmd.exchange.lines
        products = self._catalog.get_products({line.sku for line in lines})
        unknown = [
            {"field": f"exchange.lines[{i}].sku", "message": f"no product {line.sku}"}
            for i, line in enumerate(lines)
            if line.sku not in products
        ]
        if unknown:
            raise UnknownSku("unknown sku", details=unknown)
        found = self._orders.get_with_token(order.id)
        assert found is not None  # read a moment ago; orders are never deleted
        try:
            replacement = self._shipped_anyway(_replacement_command(order, cmd.exchange, found[1], external_id=None))
            self._capture.quote(replacement, check_stock=False)
        except InvalidRequest as refused:
            raise InvalidRequest(refused.message, code=refused.code, details=_of_exchange(refused)) from None

    def _check_quantities(
        self, order: Order, cmd: RequestReturn, shipped: dict[str, int], returned_before: dict[str, int]
    ) -> None:
        details = []
        for index, line in enumerate(cmd.lines):
            if line.line_id not in shipped:
                details.append(
                    {"field": f"lines[{index}].line_id", "message": f"order {order.id} has no {line.line_id}"}
                )
                continue
            left = shipped[line.line_id] - returned_before.get(line.line_id, 0)
            if line.quantity > left:
                details.append({
                    "field": f"lines[{index}].quantity",
                    "message": f"{left} of {line.line_id} can be returned (shipped {shipped[line.line_id]}, "
                               f"on earlier returns {returned_before.get(line.line_id, 0)})",
                })  # fmt: skip
        if details:
            # The sentence says what is wrong: a line the order lacks is not a count too high.
            faults = [
                f"order {order.id} has no such line" if any(d["field"].endswith(".line_id") for d in details) else "",
                "more units than were shipped and not yet returned"
                if any(d["field"].endswith(".quantity") for d in details) else "",
            ]  # fmt: skip
            raise InvalidRequest(", and ".join(fault for fault in faults if fault), details=details)

    def _decide(
        self, order: Order, cmd: RequestReturn, returned_before: dict[str, int], now: datetime
    ) -> ReturnPolicyDecision:
        def accept(decision: ReturnPolicyDecision) -> ReturnPolicyDecision:
            # Checked here, so the PluginError names the policy plugin that answered (a refusal's fee
            # is never charged).
            fee = decision.fee
            if decision.allowed and fee is not None and (fee.currency != order.currency or fee.is_negative()):
                raise PluginError(f"returned a fee of {fee.amount} {fee.currency}, not a fee in {order.currency}")
            return decision

        decision = call_hook(
            self._hook.oms_return_policy, accept, order=order, lines=cmd.lines, returned_before=returned_before, now=now
        )
        if decision is None:
            message = "no return policy allows this return"
            raise InvalidRequest(message, code="return_not_allowed", details=[{"field": "lines", "message": message}])
        if not decision.allowed:
            message = decision.message or "the return policy refuses this return"
            raise InvalidRequest(message, code=decision.code, details=[{"field": decision.field, "message": message}])
        return decision

    # --- Approve, reject --------------------------------------------------------------------
    def approve(
        self, return_id: str, note: str | None, actor: str, channel: str | None = None,
        expected_version: int | None = None,
    ) -> Return:  # fmt: skip
        """Authorize a requested return with its label in the same write. The label is booked
        first (keyed by the return's id and parcel: return_booking_key), as at request: a booking
        that fails leaves the return `requested`, so approving again books it; written after, a
        failed booking left an authorized return without a label for good (approving again is
        409). A repeat (409) first writes the order's entries a first run died before writing.
        `expected_version` (the version the approver read, their If-Match): a return at another is
        409 `version_conflict` (Return.check_seen), before the carrier is asked for a label, and
        judged again in the approval's conditional write: nothing written."""
        current = self._seen(return_id, channel, expected_version)
        booked = current
        order = self._orders.get(current.order_id)
        if current.status is R.REQUESTED and order is not None:
            booked = self._with_label(current, order, actor)
        else:
            self._noted(current, actor, order)  # a repeat (409): the entries a first run died before writing
        at = self._clock()

        def decide(r: Return) -> Return:
            r.check_seen(expected_version)
            return (
                r.approve(note, at=at)
                .labelled(booked.carrier, booked.tracking_number, booked.label_url, booked.booking)
                .owing(OrderEvent.RETURN_AUTHORIZED, actor=actor, detail={"return_id": r.id, "note": note})
            )

        try:
            item = self._change(return_id, channel, decide)
        except Exception:  # any (a rejection or expiry first, say): the return as stored decides
            if booked is not current:
                self._label_unused(booked, actor)
            raise
        self._noted(item, actor, order)
        return item

    def reject(
        self, return_id: str, note: str | None, actor: str, channel: str | None = None,
        expected_version: int | None = None,
    ) -> Return:  # fmt: skip
        """Reject a requested return (its units may be asked for again). As with `approve`, a
        repeat (409) first writes the order's entries a first run died before writing, and a
        return at another version than `expected_version` (the rejecter's If-Match) is 409
        `version_conflict`, nothing written."""
        current = self._seen(return_id, channel, expected_version)
        if current.status is not R.REQUESTED:
            self._noted(current, actor)
        at = self._clock()

        def decide(r: Return) -> Return:
            r.check_seen(expected_version)
            return r.reject(note, at=at).owing(
                OrderEvent.RETURN_REJECTED, actor=actor, detail={"return_id": r.id, "note": note}
            )

        item = self._change(return_id, channel, decide)
        self._noted(item, actor)
        return item

    def _seen(self, return_id: str, channel: str | None, expected_version: int | None) -> Return:
        """The return a person's decision from `expected_version` is made on, refused when it is at
        another (Return.check_seen) before anything is asked or written; a plain read that shows
        another may predate the version they read, so it is judged on the return as stored."""
        current = self.get(return_id, channel)
        if expected_version is not None and current.version != expected_version:
            current = visible_return(self._returns.get(return_id, consistent=True), return_id, channel)
            current.check_seen(expected_version)
        return current

    def _change(self, return_id: str, channel: str | None, decide: Callable[[Return], Return]) -> Return:
        """`decide`'s new version of the return, written conditionally; `decide` answers the return
        it was given when a concurrent run did the change already, and that is answered as it is.
        A refusal (a Conflict: the return is not in a status for it), and every read after a lost
        race, is decided again on a consistent read, as core.order_changes.modify does: a plain read
        may predate the write this change follows (the workflow's steps run just after the receipt)."""
        consistent = False
        for _ in range(ATTEMPTS):
            found = self._returns.get(return_id, consistent=True) if consistent else self._returns.get(return_id)
            if found is None and not consistent:
                consistent = True  # a moment-old return a plain read does not show yet
                continue
            current = visible_return(found, return_id, channel)
            try:
                new = decide(current)
            except Conflict:
                if consistent:
                    raise
                consistent = True
                continue
            if new is current:
                return current
            try:
                self._returns.update(new, current)
            except StaleVersion:
                consistent = True
                continue
            return new
        raise StaleVersion(f"return {return_id} kept changing; retry")

    # --- Expiry -----------------------------------------------------------------------------
    def expire(self, return_id: str, started_before: datetime, actor: str) -> bool:
        """Cancel a return still `requested` or `authorized` whose wait started before
        `started_before` (the jeopardy scan's return expiry; Return.expiry_start: an authorized
        return's approval, a requested one's creation): one write conditional on its status and
        version, then a `return_cancelled` entry (reason `return_expired`) on the order's
        history (written by the history's next reader when that write keeps losing races). Its
        units may be returned again (CLOSED) and its exchange is never placed (only a received
        return's is). True when this call cancelled it; a return received meanwhile, or
        cancelled by a concurrent pass, is left as it is (False), so the entry is written once."""
        at = self._clock()
        was: R | None = None

        def decide(item: Return) -> Return:
            nonlocal was
            expired = item.status in UNRECEIVED_RETURNS and item.expiry_start() < started_before
            was = item.status if expired else None
            if was is None:
                return item
            detail = {
                "return_id": item.id, "reason": RETURN_EXPIRED, "status": was.value,
                "created_at": utc_text(item.created_at),
            }  # fmt: skip
            if was is R.AUTHORIZED:
                detail["authorized_at"] = utc_text(item.expiry_start())
            return item.cancel(at=at).owing(OrderEvent.RETURN_CANCELLED, actor=actor, detail=detail)

        try:
            item = self._change(return_id, None, decide)
        except StaleVersion:
            return False  # it kept changing: the next pass judges it again
        if was is None:
            return False
        # Written after the return's own change, which is what frees its units and carries the
        # entry: should this die in between, or keep losing its write to another change of the
        # order, the next reader of the order's history writes it. The return is cancelled either
        # way, and the scan goes on to the next one.
        # The label bookings this gives up (its own label's, Returns._note) are owed on the order and
        # cancelled by the reconciler's carrier pass, not here: a slow or down carrier would hold up
        # the scan, which expires up to a hundred returns a pass.
        with contextlib.suppress(StaleVersion):
            self._note(item)
        return True

    # --- Label ------------------------------------------------------------------------------
    def _with_label(self, item: Return, order: Order, actor: str) -> Return:
        """`item` with the label the carrier plugin booked for it (stored in the label store), or
        as it is when no plugin answers or it has nowhere to go back to. Same version: the label
        belongs to the change that authorizes the return. A booking that fails may have been made
        (the answer lost), and one whose label could not be stored was: either is kept on the
        order as made for the return (_label_unrecorded) before the failure goes on."""
        destination = self._catalog.get_location(item.return_to) if item.return_to else None
        if destination is None:
            return item
        lines = [ShipmentLine(line_id=line.line_id, quantity=line.quantity) for line in item.lines]
        sku_of = {line.line_id: line.sku for line in order.lines}
        products = self._catalog.get_products(set(sku_of.values()))
        weight = sum(
            (products[sku_of[x.line_id]].weight_grams or 0) * x.quantity for x in lines if sku_of[x.line_id] in products
        )
        parcel = _parcel_hash(destination.location_id, [(x.line_id, x.quantity) for x in lines], weight)
        key = f"{item.id}-{parcel}"  # return_booking_key
        try:
            booked = call_hook(
                self._hook.oms_carrier_return_label, order=order, return_id=item.id, booking_key=key,
                destination=destination, lines=lines, weight_grams=weight,
            )  # fmt: skip
        except Exception:  # any: the carrier may have booked it all the same
            self._label_unrecorded(order.id, GivenUpBooking(shipment_id=item.id, booking_key=key), actor)
            raise
        if booked is None:
            return item
        # Stored under the booking's key, as a shipment's: a request that lost the return's id to a
        # concurrent one stored its label under that id too, and would replace the winner's.
        try:
            stored = stored_label(self._labels, booked, order.id, key)
        except Exception:  # any: booked, and not kept
            made = GivenUpBooking(
                shipment_id=item.id, carrier=booked.carrier, tracking_number=booked.tracking_number, booking_key=key
            )
            self._label_unrecorded(order.id, made, actor)
            raise
        return item.labelled(booked.carrier, booked.tracking_number, stored, parcel)

    def _label_unused(self, item: Return, actor: str) -> None:
        """`item`'s label booking, which a failed or lost write did not store, kept on the order as
        made for its return (_label_unrecorded); nothing without one."""
        booking = label_booking(item)
        if booking is not None:
            self._label_unrecorded(item.order_id, booking, actor)

    def _label_unrecorded(self, order_id: str, booking: GivenUpBooking, actor: str) -> None:
        """A return label booking made, or maybe made, that no return records: kept on the order
        (Order.return_label_unrecorded), then judged on its return if that is stored (it may have
        been before the booking was kept, and judged with the order as it was): used, owed a
        cancel (asked at once), or kept until the return is stored or changes (Returns._noted
        judges it then). Kept first, so either this or that change's write sees it."""
        at = self._clock()
        with contextlib.suppress(NotFound, StaleVersion):
            modify(self._orders, order_id, lambda order: order.return_label_unrecorded(booking, at=at))
        stored = self._returns.get(booking.shipment_id, consistent=True)
        if stored is not None:
            self._cancel_labels(order_id, self._labels_judged(stored), actor)

    def _labels_judged(self, item: Return) -> list[GivenUpBooking]:
        """The order's return label bookings no return records, judged on `item` (judged_labels) in
        a write of their own; those given up."""
        at = self._clock()
        given_up: list[GivenUpBooking] = []

        def decide(order: Order) -> Bookkeeping | None:
            unrecorded, given_up[:] = judged_labels(item, order.unrecorded_return_labels)
            return order.return_labels_judged(unrecorded, given_up, at=at)

        written: list[Order] = []
        with contextlib.suppress(NotFound, StaleVersion):
            modify(self._orders, item.order_id, decide, consistent=True, written=written)
        return given_up if written else []

    def _cancel_labels(self, order_id: str, bookings: list[GivenUpBooking], actor: str) -> None:
        """Ask the carrier at once to cancel `bookings`, given up by a write a moment ago (one it
        fails stays owed for the reconciler's pass, core.carrier_bookings)."""
        if not bookings:
            return
        order = self._orders.get(order_id, consistent=True)
        if order is not None:
            self._bookings.cancel_given_up(order, actor, only=bookings)

    # --- Receive ----------------------------------------------------------------------------
    def receive(self, return_id: str, receipt: ReceiveReturn, actor: str, channel: str | None = None) -> Return:
        """Record what arrived (the workflow's first step, run by the API so a wrong receipt is
        answered at once). A return received already is returned as it is: receiving twice changes
        nothing; another receipt of it is 409 (Return.receive). Units beyond what a line authorized
        are 422; an unknown location is 422 `unknown_location`."""
        item = self.get(return_id, channel)
        if item.status in (R.RECEIVED, R.REFUNDED):
            return item.receive(receipt, at=self._clock(), by=actor)
        if self._catalog.get_location(receipt.location_id) is None:
            raise InvalidRequest(
                f"no location {receipt.location_id}",
                code="unknown_location",  # as POST /purchase-orders and PUT /sourcing/rules name it
                details=[{"field": "location_id", "message": "unknown location"}],
            )
        at = self._clock()
        return self._change(return_id, channel, lambda r: r.receive(receipt, at=at, by=actor))

    def restock(self, return_id: str) -> Return:
        """Resellable units back on hand at the receiving location, once per return and line; a
        line's units that would take on_hand past MAX_ON_HAND (what a stock take may count) are
        refused as a whole and recorded so (InventoryRepository.restock): the return goes on (it is
        counted and refunded), and the order's entry of it names them (record_on_order). The units
        are on the shelf from their receipt (`received_at`): a stock take recorded since (a restock
        whose step died, finished after it) counted them, so they are not added again."""
        item = self._received(return_id)
        if item.received_at_location is None:
            raise ReturnNotReceived(f"return {return_id} is {item.status}, not received")
        order = self._orders.get(item.order_id)
        if order is None:
            raise NotFound(f"no order {item.order_id}")
        sku_of = {line.line_id: line.sku for line in order.lines}
        for line in item.lines:
            if line.resellable_quantity > 0:
                self._inventory.restock(
                    sku_of[line.line_id], item.received_at_location, restock_key(item.id, line.line_id),
                    line.resellable_quantity, received_at=item.received_at,
                )  # fmt: skip
        return item

    def record_on_order(self, return_id: str, actor: str) -> Order:
        """The order counts the received units (`returned_quantity`) and becomes
        `partially_returned` or `returned`; once per return. The history names the key that
        received the return (`actor` for one received before keys were kept on returns)."""
        item = self._received(return_id)
        self._note(item)  # its request and approval come before its receipt, whoever died before them
        at = self._clock()
        back = [line for line in item.lines if line.resellable_quantity]
        refused = {}  # the lines whose units would have taken on_hand past its cap: not restocked (restock)
        if back and item.received_at_location is not None:
            keys = {restock_key(item.id, line.line_id): line.line_id for line in back}
            refused = {keys[key]: units for key, units in
                       self._inventory.not_restocked(item.received_at_location, list(keys)).items()}  # fmt: skip
        detail: dict[str, Any] = {
            "location_id": item.received_at_location,
            "restocked": [{"line_id": line.line_id, "quantity": line.resellable_quantity}
                          for line in back if line.line_id not in refused],
        }  # fmt: skip
        if refused:
            detail["not_restocked"] = [{"line_id": line_id, "quantity": units, "reason": StockLimitReached.code}
                                       for line_id, units in sorted(refused.items())]  # fmt: skip
        return modify(
            self._orders, item.order_id,
            lambda order: order.record_return(
                item.id, item.received(), at=at, actor=item.received_by or actor, detail=detail,
                whole_order_shipping=item.refund_shipping_with_whole_order,
            ),
        )  # fmt: skip

    # --- Refund -----------------------------------------------------------------------------
    def refund(self, return_id: str, actor: str) -> Return:
        """Refund the received units through the payment plugin (core.refunds.refund_due: each
        unit's exact share of its line total, the shipping when the policy said so and it is still
        owed (_shipping_due, decided on the order as the refund is written), minus the fee, never
        more than captured minus refunded) and mark the return `refunded` with the amount.

        Idempotent: the refund's key is the return's id and attempt (the number of its refunds the
        gateway refused), so a retried step asks the gateway under the same key and the order
        records it once; a refused refund stays on the order as `failed`, the return stays
        `received`, and the next run tries again under a new key (RefundNotDone, for the workflow's
        Retry). A gateway still unavailable raises PaymentGatewayUnavailable (retried the same way),
        and a refund a run left pending that no payment plugin takes now raises NoPaymentPlugin,
        still pending (that run may have refunded it through the removed plugin)."""
        item = self._show_owed(return_id) if (item := self._received(return_id)).shows_owed else item
        if item.status is R.REFUNDED:
            return item
        if item.exchange is not None:
            return item  # the Exchange step settles it: the refund pays for the replacement first
        return self._refund_units(item, actor)

    def _refund_units(self, item: Return, actor: str, reason: str | None = None) -> Return:
        """The refund step's refund of a received return's units (`reason`: the refund's, when not
        the return's own)."""
        order = self._orders.get(item.order_id)
        if order is None:
            raise NotFound(f"no order {item.order_id}")
        return self._pay_back(
            item, order, lambda current: self._own_due(item, current), actor,
            beyond=(lambda own: self._from_credit(item, order.id, own, actor)) if order.exchange_of else None,
            shares=lambda current: self._shares(item, current),
            shipping=lambda current: self._shipping_back(item, current, self._returns.for_order(item.order_id)),
            reason=reason, uncapped=lambda current: self._due(item, current, capped=False),
        )  # fmt: skip

    def _own_due(self, item: Return, order: Order) -> Money:
        """What of the return its order's own payment refunds (_due). A replacement's leaves what its
        captures hold beyond its total (a settlement refund the gateway refused, asked again:
        core.unit_cancellation.held_beyond_total) to its settlement: its credit was given back
        without it, so the credit refunds the return what the rest does not cover (_from_credit)."""
        due = self._due(item, order)
        if order.exchange_credit is None:
            return due
        left = order.refundable(besides_return=item.id) - held_beyond_total(order)
        return min(due, max(left, Money.zero(order.currency)))

    def _from_credit(self, item: Return, replacement_id: str, own: Money, actor: str) -> Money:
        """What of a replacement's return its own captures did not cover (they paid only the
        difference), refunded from its exchange's credit on the original order (ExchangeCredits.draw).
        What the credit left cannot refund either (a settlement capture of the replacement still to
        make, refused) is kept back on the replacement (Order.keep_back), refunded once a capture
        makes it refundable (core.unit_cancellation.UnitCancellation.refund_kept_back)."""
        replacement = visible(self._orders.get(replacement_id), replacement_id, None)
        uncovered = self._due(item, replacement, capped=False) + self._repriced_since(item, replacement) - own
        if uncovered.amount <= 0:
            return Money.zero(replacement.currency)
        refund = self._credits.draw(replacement, item.id, uncovered, actor)
        if refund is not None and refund.status != RefundStatus.SUCCEEDED:
            raise RefundNotDone(f"the refund of return {item.id} from its credit is {refund.status}; {ASKED_AGAIN}")
        drawn = refund.amount if refund is not None else Money.zero(replacement.currency)
        short = uncovered - drawn
        if short.amount > 0:
            at = self._clock()
            modify(self._orders, replacement_id, lambda current: current.keep_back(item.id, short, at=at))
        return drawn

    def _repriced_since(self, item: Return, order: Order) -> Money:
        """What the return's units were recorded as given back (its refund's lines, or what its
        credit refunds: core.refunds.given_back_for_units) beyond what they are worth now (_shares):
        a draw on the credit refused, then units of the line cancelled and it priced again, is asked
        again for what was recorded, which the credit given back since counted as drawn."""
        recorded = given_back_for_units(order).get(item.id)
        if not recorded:
            return Money.zero(order.currency)
        now = self._shares(item, order)
        zero = Money.zero(order.currency)
        return sum((share.amount for share in recorded), zero) - sum((share.amount for share in now), zero)

    def _due(self, item: Return, order: Order, *, capped: bool = True) -> Money:
        returns = self._returns.for_order(item.order_id)
        units, worth = _refunded_before(returns, besides=item.id, order=order)
        # An exchange's credit gives back the shipping it claimed (_claim_shipping), no more; one
        # given up is refunded as any return is.
        shipping = (
            self._shipping_back(item, order, returns)
            if item.exchange is None or item.exchange_not_placed is not None
            else order.shipping_claims.get(item.id, Money.zero(order.currency))
        )
        return refund_due(
            order, item.received(), shipping, item.fee, returned_before=units, refunded_before=worth, capped=capped,
            besides_return=item.id,
        )  # fmt: skip

    def _shipping_back(self, item: Return, order: Order, returns: list[Return]) -> Money:
        """_shipping_due, counting what exchanges settled before credits claimed the shipping gave
        back of it in their credit (_credited_shipping)."""
        if not (item.refund_shipping or item.refund_shipping_with_whole_order):
            return Money.zero(order.currency)
        return _shipping_due(item, order, returns, self._credited_shipping(item, order, returns))

    def _credited_shipping(self, item: Return, order: Order, returns: list[Return]) -> Money:
        """What of `order`'s shipping the credits of its other returns' exchanges gave back without
        claiming it (Order.shipping_claims): those settled before claims were kept, whose credit
        is what the units were worth (Order.exchange_shares) plus the shipping their policy
        granted. Only a return granted `refund_shipping` had it added then (an exchange settled
        since claims it, or was owed none), so only those replacements are read."""
        zero = Money.zero(order.currency)
        given = zero
        for other in returns:
            if other.id == item.id or not other.refund_shipping or other.exchange_order_id is None:
                continue
            if other.id in order.shipping_claims:
                continue
            replacement = self._orders.get(other.exchange_order_id)
            if replacement is None or replacement.exchange_credit is None:
                continue
            worth = sum((share.amount for share in order.exchange_shares.get(other.id, [])), zero)
            given = given + max(replacement.exchange_credit - worth, zero, key=lambda money: money.amount)
        return given

    def _shares(self, item: Return, order: Order) -> list[RefundedUnits]:
        """What the return gives back for each line's units (recorded with its refund, or its
        exchange, so that a later return of the line counts what it gave)."""
        units, worth = self._refunded_before(item, order)
        return units_refunded(order, item.received(), returned_before=units, refunded_before=worth)

    def _refunded_before(self, item: Return, order: Order) -> tuple[dict[str, int], dict[str, Money]]:
        return _refunded_before(self._returns.for_order(item.order_id), besides=item.id, order=order)

    def _pay_back(
        self, item: Return, order: Order, due: Callable[[Order], Money], actor: str,
        *, beyond: Callable[[Money], Money] | None = None,
        shares: Callable[[Order], list[RefundedUnits]] | None = None,
        shipping: Callable[[Order], Money] | None = None, reason: str | None = None,
        uncapped: Callable[[Order], Money] | None = None,
    ) -> Return:  # fmt: skip
        """Refund `due(order)` for the return (once: a succeeded refund of it is found and kept),
        recorded with `shares(order)`, what it gives back for each line's units, and `shipping(order)`,
        what of it is the order's shipping, and mark it `refunded` with what was given back.
        With `uncapped(order)` (what the return is worth, whatever the payment can still give
        back), never more than that less what refused attempts of it gave back all the same: the
        parts of a split refund the gateway approved before it refused one (_went_back_before),
        which the return shows it gave back.

        Other refunds of the order still pending at the gateway are finished first, under their
        own keys: each holds its amount, and a due capped beside them would keep short of what a
        refused one frees again (PaymentGatewayUnavailable while the gateway stays down). So is a
        refund of what the return kept back that a ship left pending (a run died before marking
        the return refunded): made, it is the return's refund. A return that kept something back, or
        an exchange, shows, once marked, what was refunded for it in all (_shown_in_all)."""
        return_id = item.id
        kept = [item.id in order.returns_kept_back or any(r.kept_back for r in order.payment.refunds
                                                           if r.return_id == item.id)]  # fmt: skip
        mine = [r for r in order.payment.refunds if r.return_id == item.id]
        done = next((r for r in mine if r.status == RefundStatus.SUCCEEDED), None)
        steps = {refund_id_for(order.id, f"{item.id}#{attempt}") for attempt in range(len(mine))}
        if done is None and any(r.status == RefundStatus.PENDING and r.id not in steps for r in mine):
            # What a ship refunded of what this return kept back (a run that died before marking it
            # refunded), still pending: finished first, it is the return's refund, or refused frees
            # what it holds; left out, a refund decided beside it would give the units back twice.
            order = self._finish_pending(item, order, actor)
            done = next(
                (r for r in order.payment.refunds if r.return_id == item.id and r.status == RefundStatus.SUCCEEDED),
                None,
            )
        if done is None and any(
            r.status == RefundStatus.PENDING and r.return_id != item.id for r in order.payment.refunds
        ):
            order = self._finish_pending(item, order, actor, besides_return=item.id)
        if done is None:

            def decide(current: Order) -> Decision | None:
                # On the order as the refund is written: a refund of another return that landed
                # since it was read counts its units (and holds its amount) here.
                attempt = sum(
                    1 for r in current.payment.refunds if r.return_id == item.id and r.status == RefundStatus.FAILED
                )
                key = f"{item.id}#{attempt}"
                if current.payment.refund_by_id(refund_id_for(current.id, key)) is not None:
                    return key, Money.zero(current.currency)  # carried on with the amount it was written with
                if beyond is not None and item.id in current.credit_refunded_shares:
                    # A run before this one found the replacement's captures gave nothing and its
                    # credit refunds it whole; a capture made since must not record its units twice.
                    return None
                amount = due(current)
                went = _went_back_before(current, item.id)
                if went.amount > 0 and uncapped is not None:
                    # A refused attempt split over two authorizations gave part of it back already.
                    amount = min(amount, uncapped(current) - went, key=lambda money: money.amount)
                if amount.amount <= 0:
                    return None
                if shares is None:
                    return key, amount
                # All the shipping the return gives back, not only what of it this refund's amount
                # covers: the rest is in what it keeps back (refunded once a capture makes it
                # refundable), in its draw on an exchange's credit, in what a refused split attempt
                # gave back or in its fee, so no other return is owed that shipping again.
                back = shipping(current) if shipping else None
                back = back if back is not None and back.amount > 0 else None
                held = _kept_back(current, item.id, amount, went, uncapped) if beyond is None else None
                if held is not None:
                    kept.append(True)
                    return key, amount, shares(current), back, held
                if back is None:
                    return key, amount, shares(current)
                return key, amount, shares(current), back

            refund = self._refunds.issue_decided_refund(
                item.order_id, decide, reason or f"return {item.id}", actor, kind="return", return_id=item.id
            )
            if refund is not None and refund.status != RefundStatus.SUCCEEDED:
                raise RefundNotDone(f"the refund of return {item.id} is {refund.status}; {ASKED_AGAIN}")
            if refund is None and beyond is not None and shares is not None:
                # A replacement's captures gave nothing of it (its credit refunds it whole): what
                # its units were worth is recorded all the same, as a refund records it.
                at = self._clock()
                modify(
                    self._orders, item.order_id,
                    lambda current: current.refunded_from_credit(item.id, shares(current), at=at),
                )  # fmt: skip
            if refund is None and beyond is None and uncapped is not None:
                self._keep_back(item, uncapped, shipping)
                self._kept_by_fee(item, shipping or (lambda current: Money.zero(current.currency)))
                kept.append(True)
            amount = refund.amount if refund is not None else Money.zero(order.currency)
        else:
            amount = done.amount
        if uncapped is not None:
            amount = amount + _went_back_before(order, item.id)  # recorded by an earlier run: on `order`
        if beyond is not None:
            amount = amount + beyond(amount)
        at = self._clock()
        marked = self._change(return_id, None, lambda r: r if r.status is R.REFUNDED else r.refunded(amount, at=at))
        if marked.shows_owed:
            # A concurrent run of this step recorded finishing other returns' pending refunds and
            # may die after: marked refunded, the return is read by no pass again, so this run
            # finishes them (each under its own key, once) and has them show it.
            marked = self._finish_owed(marked, actor)
        # An exchange's credit may have been given back too (its replacement cancelled at once).
        return self._shown_in_all(marked) if any(kept) or item.exchange is not None else marked

    def _finish_pending(self, item: Return, order: Order, actor: str, *, besides_return: str | None = None) -> Order:
        """`order`, read consistently (a plain read may predate the refunds' records of a moment
        ago, and a refund made would be made again), once this step of `item` has finished its
        pending refunds (RefundService.finish_pending) but those of `besides_return`. The refunded
        returns whose refunds it finishes (what a return kept back, refunded by a ship the gateway
        then left pending) show what was refunded for them in all (show_refunded_in_all): nothing
        else finishes them now. One naming no return may be of what an exchange's credit kept back
        (kept_back_owed): the exchanges' returns whose credit kept something back show it then.
        Those returns are recorded on `item` before the gateway is asked (Return.shows_owed), and
        the record cleared once they show it (show_owed): a step that dies between leaves the
        record for its retry (refund, exchange) or the reconciler's returns pass, as nothing
        pending is left to tell them. Nothing is written on `item` when no other return's refund is
        pending."""
        owed = owed_when_finished(order, item.id)
        if owed:
            recorded = self._change(
                item.id, None,
                lambda r: r if r.status is R.REFUNDED or set(owed) <= set(r.shows_owed) else r.owing_shown(owed),
            )  # fmt: skip
            if recorded.status is R.REFUNDED:
                # A concurrent run marked it refunded: a record on it would be read by nothing (the
                # returns pass reads received returns), so nothing is finished here. Still pending,
                # the refunds are the reconciler's pending-refund pass's, which shows what went back.
                return visible(self._orders.get(order.id, consistent=True), order.id, None)
        try:
            finished = self._refunds.finish_pending(order.id, actor, besides_return=besides_return)
        except BaseException as error:
            # Refused, or the gateway down for one of them, those finished before still show it;
            # a show failing then does not hide why the step stopped (a gateway down is a Retry).
            try:
                self._show_finished(item, order.id, owed, [])
            except Exception as failed:
                error.add_note(f"showing the returns owed what went back failed too: {failed!r}")
            raise
        return self._show_finished(item, order.id, owed, finished)

    def _show_finished(self, item: Return, order_id: str, owed: list[str], finished: list[Refund]) -> Order:
        """The order, read consistently, once the returns `owed` (recorded on `item`) and those the
        refunds `finished` were answered for show what went back for them (show_owed): shown by
        this step whatever the record says now (another reader may have cleared it), with those the
        finish found pending that the order read before did not show."""
        order = visible(self._orders.get(order_id, consistent=True), order_id, None)
        shown = [*owed, *_answered_returns(order, finished)]
        if shown:
            self._show_owed(item.id, order, shown)
        return order

    def _finish_owed(self, item: Return, actor: str) -> Return:
        """`item`, marked refunded with other returns recorded as owed (Return.shows_owed), once
        their refunds still pending are finished (but its own) and they show what went back."""
        order = visible(self._orders.get(item.order_id, consistent=True), item.order_id, None)
        finished: list[Refund] = []
        if owed_when_finished(order, item.id):
            # Refused, the gateway down or the payment plugin failing: nothing was recorded as
            # moved, and the pending-refund pass asks again (and shows it).
            with contextlib.suppress(PaymentRefused, PaymentGatewayUnavailable, PaymentPluginFailed):
                finished = self._refunds.finish_pending(order.id, actor, besides_return=item.id)
            order = visible(self._orders.get(order.id, consistent=True), order.id, None)
        return self._show_owed(item.id, order, _answered_returns(order, finished))

    def _show_owed(self, return_id: str, order: Order | None = None, finished: list[str] | None = None) -> Return:
        """The return, once the returns its step finished the refunds of, and `finished`, show it (show_owed)."""
        item = visible_return(self._returns.get(return_id, consistent=True), return_id, None)
        return show_owed(self._returns, self._orders, item, self._clock(), order=order, finished=finished or ())

    def _shown_in_all(self, item: Return) -> Return:
        """`item`, marked refunded, showing what was refunded for it in all (refunded_for_return):
        the next parcel's ship may have refunded what it (or its exchange's credit) kept back
        between its refund and that mark, or its replacement's cancel what its credit gave back,
        and found it received, showing it nothing (core.refund_service.show_refunded_in_all); on an
        order that is itself a replacement, with what the credits up the chain gave back for its
        exchange (ExchangeCredits.carried_for_return). Never less than it shows. Read only for a
        return that kept something back or is an exchange."""
        order = self._orders.get(item.order_id, consistent=True)
        given = refunded_for_return(order, item.id) if order is not None else None
        if order is not None and given is not None and item.exchange is not None and order.exchange_of:
            given = given + self._credits.carried_for_return(order, item.id)  # what earlier credits gave back
        at = self._clock()
        for _ in range(ATTEMPTS):
            if given is None or item.status is not R.REFUNDED or given <= item.refund:
                return item
            try:
                new = item.refunded_in_all(given, at=at)
                self._returns.update(new, item)
            except StaleVersion:
                # Read consistently: a plain read just after the mark may show the return received.
                item = self._returns.get(item.id, consistent=True) or item
                continue
            return new
        return item

    def _keep_back(
        self, item: Return, uncapped: Callable[[Order], Money], shipping: Callable[[Order], Money] | None = None
    ) -> None:  # fmt: skip
        """A return whose refund gave nothing, nothing being refundable while its units were worth
        something (an appeasement took what they were captured for): what they were worth is kept
        back on the order (Order.keep_back, decided on the order as it is written), to be refunded
        once a later parcel's capture makes it refundable, as a refund that gave part keeps the rest
        (one captured since the refund decided is refunded by the next ship or delivery). What of
        it is the order's shipping (`shipping(order)`) is claimed with it, so that it goes back once:
        a refund that gave part records it as its `shipping`."""
        at = self._clock()

        def keep(current: Order) -> Bookkeeping | None:
            if any(r.return_id == item.id and r.status != RefundStatus.FAILED for r in current.payment.refunds):
                return None  # a refund of it is under way or made: what it keeps back is its own
            kept = uncapped(current) - _went_back_before(current, item.id)
            if kept.amount <= 0:
                return None
            return current.keep_back(item.id, kept, at=at, shipping=shipping(current) if shipping else None)

        modify(self._orders, item.order_id, keep)

    def _kept_by_fee(self, item: Return, shipping: Callable[[Order], Money]) -> None:
        """A return whose refund gave nothing as its fee took all its units were worth: what they
        were worth is recorded on the order (Order.kept_by_fee) as a refund records it, so that a
        cancel that prices their line again settles the payment as for units a fee only lowered the
        refund of. For a return that gives the order's shipping back with the whole order, while
        the whole order was not back yet (its refund weighed no shipping: `shipping(order)` is zero),
        so is what of the fee its units did not cover, so that the shipping given back once the rest
        is cancelled is the refund's due as if the whole order had been back
        (core.refunds._whole_order_shipping_owed): its units and the shipping, minus the fee,
        whichever of the cancel and the return came first."""
        if item.fee.amount <= 0:
            return
        at = self._clock()

        def record(current: Order) -> Bookkeeping | None:
            shares = self._shares(item, current)
            worth = sum((share.amount for share in shares), Money.zero(current.currency))
            if worth + shipping(current) > item.fee:
                return None  # the fee did not take it all: its refund was capped (kept back), or made
            beyond = item.fee - worth
            whole_order = item.refund_shipping_with_whole_order and shipping(current).amount == 0
            return current.kept_by_fee(item.id, shares, at=at, beyond=beyond if whole_order else None)

        modify(self._orders, item.order_id, record)

    # --- Exchange ---------------------------------------------------------------------------
    def exchange(self, return_id: str, actor: str) -> Return:
        """The workflow's step after Refund: place the replacement order of a received return's
        exchange through the capture path, with the returned units' refund (core.refunds.refund_due)
        as its `exchange_credit`, so its workflow authorizes only what the credit does not cover;
        refund what the credit leaves over once; mark the return `refunded` with what was given back.
        A replacement that can never be placed (NOT_PLACEABLE: for want of stock of a product that
        may not wait for it, of a price in the order's currency, of any shipping for it, of a
        payment plugin taking its method or of its pickup store; or because an order the channel
        placed itself has its external_id) is given up for good: the units are refunded instead (_refund_instead).
        Placing or giving up is decided once, by one conditional write on the return (_decided,
        _without_exchange): of two concurrent runs whose stock checks disagree, the first to write
        decides for both, so a replacement is never placed beside the refund of its units. Only a
        refusal where the decided replacement is placed (none placed yet) gives the decision up:
        at once when its external_id is taken, otherwise once no concurrent run can still put the
        replacement it priced before (_given_up_after_refusal).

        Idempotent: the replacement's external_id is the original's plus `-x` and the return's
        ordinal, so a retried step finds the order it placed (and the credit stored on it); the
        original's history names the exchange once (Order.exchanged); the rest is refunded under
        the refund step's keys. A return without an exchange is left as the Refund step left it."""
        item = self._show_owed(return_id) if (item := self._received(return_id)).shows_owed else item
        if item.exchange is None or item.status is R.REFUNDED:
            return item
        if item.exchange_not_placed is not None:
            return self._refund_instead(item, actor)
        found = self._orders.get_with_token(item.order_id)
        if found is None:
            raise NotFound(f"no order {item.order_id}")
        original, token = found
        checked: PlaceOrder | None = None
        try:
            item, checked = self._decided(item, original, token)
        except NOT_PLACEABLE as refused:
            item = self._without_exchange(item, refused, actor)
        if item.exchange_refused is not None:
            # A run found the decided replacement refused: this one puts none.
            item = self._given_up_after_refusal(item, original, None, actor)
        if item.exchange_not_placed is not None or item.status is not R.RECEIVED:
            return self._refund_instead(item, actor)
        try:
            replacement = self._replacement(item, original, token, actor, checked)
        except ExchangeIdTaken as taken:
            # After this exchange was decided, the channel took the id: no run can place it.
            return self._refund_instead(self._without_exchange(item, taken, actor), actor)
        except NOT_PLACEABLE as refused:
            # After this exchange was decided, the shop's prices, shipping, payment methods or
            # stores changed: retried, it would only end stuck. But a concurrent run may be putting
            # the replacement it priced before: given up only once none can (_given_up_after_refusal).
            return self._refund_instead(self._given_up_after_refusal(item, original, refused, actor), actor)
        zero = Money.zero(original.currency)
        credit = replacement.exchange_credit or zero
        rest = credit - replacement.totals.grand_total
        rest = rest if rest.amount > 0 else zero
        at = self._clock()
        original = modify(
            self._orders, original.id,
            lambda order: order.exchanged(
                item.id, replacement.id, credit, rest, self._shares(item, order), at=at, actor=actor
            ),
        )  # fmt: skip
        item = self._change(
            return_id, None,
            lambda r: r if r.exchange_order_id else r.with_exchange_order(replacement.id, at=at),
        )  # fmt: skip

        def rest_of_credit(current: Order) -> Money:
            # Never past the credit: a replacement cancelled meanwhile gave it back already (ExchangeCredits).
            # An original that is itself a replacement refunds only what it can, and the earlier
            # credit the rest (carried_rest); any other refunds it all, or the step fails for an
            # operator rather than settle short.
            own = current.refundable(besides_return=item.id) if current.exchange_of else rest
            return max(min(rest, self._credits.unused(current, item.id, credit), own), zero)

        def carried_rest(got: Money) -> Money:
            # An exchange of an exchange: what the original's own captures could not refund of the
            # rest comes from the original's own credit (ExchangeCredits.carry).
            wanted = lambda left: max(min(rest, left), zero)  # noqa: E731
            drawn = self._credits.carry(original, item.id, credit, got, f"return {item.id}", item.id, wanted, actor)
            if drawn is None:
                return zero
            if drawn.status != RefundStatus.SUCCEEDED:
                raise RefundNotDone(f"the rest of return {item.id}'s credit is {drawn.status}; {ASKED_AGAIN}")
            return drawn.amount

        return self._pay_back(item, original, rest_of_credit, actor, beyond=carried_rest)

    def _without_exchange(self, item: Return, refused: DomainError, actor: str) -> Return:
        """`item` with its exchange given up for `refused` (Return.without_exchange), owing the
        original's history an `exchange_not_placed` entry that says why; a concurrent run's
        decision (or replacement) stands, unless the replacement's external_id is taken by another
        order (ExchangeIdTaken: none of this return's can ever be placed)."""
        at = self._clock()
        detail = _not_placed(item, refused)

        def decide(current: Return) -> Return:
            if current.status is not R.RECEIVED or current.exchange_not_placed or current.exchange_order_id:
                return current
            if current.exchange_placing and not isinstance(refused, ExchangeIdTaken):
                return current  # decided to place: a check that disagrees since changes nothing
            return current.without_exchange(detail["code"], at=at).owing(
                OrderEvent.EXCHANGE_NOT_PLACED, actor=actor, detail=detail
            )

        return self._change(item.id, None, decide)

    def _given_up_after_refusal(
        self, item: Return, original: Order, refused: DomainError | None, actor: str
    ) -> Return:  # fmt: skip
        """`item`, whose replacement was decided to be placed (_decided) and refused since (by
        `refused`, in this run, or as a run recorded it: Return.exchange_refused), given up once no
        run can put that replacement any more. The refusal is written first, and no run that reads
        it puts one; a run that read the return before it puts its replacement within the returns
        step function's Timeout (10 s) of that read, so the give-up waits PUT_WINDOW after the
        refusal (RefundNotDone meanwhile: the workflow's retry comes back after it), then finds
        none of this return's placed. One found placed is the exchange (`item` answered as it is)."""
        if item.exchange_refused is None:
            assert refused is not None
            at = self._clock()
            detail = _not_placed(item, refused)

            def refuse(current: Return) -> Return:
                undecided = current.exchange_refused is not None or not current.exchange_placing
                if undecided or current.exchange_order_id or current.exchange_not_placed:
                    return current
                return current if current.status is not R.RECEIVED else current.refused_after_deciding(detail, at=at)

            item = self._change(item.id, None, refuse)
        refusal = item.exchange_refused
        if refusal is None or item.exchange_not_placed or item.exchange_order_id or item.status is not R.RECEIVED:
            return item  # given up, placed or settled by a concurrent run meanwhile
        if self._clock() - datetime.fromisoformat(refusal["at"]) < PUT_WINDOW:
            raise RefundNotDone(
                f"the replacement of return {item.id} was refused after it was decided on; its units "
                "are refunded once no run can still place it"
            )
        placed = self._placed_replacement(item, original, consistent=True)
        if placed is not None and placed.exchange_of == item.id:
            return item
        at = self._clock()
        detail = {key: value for key, value in refusal.items() if key != "at"}

        def give_up(current: Return) -> Return:
            if current.exchange_refused != refusal or current.exchange_order_id or current.exchange_not_placed:
                return current
            if current.status is not R.RECEIVED:
                return current
            return current.without_exchange(detail["code"], at=at).owing(
                OrderEvent.EXCHANGE_NOT_PLACED, actor=actor, detail=detail
            )

        return self._change(item.id, None, give_up)

    def _refund_instead(self, item: Return, actor: str) -> Return:
        """A return whose exchange was given up (Return.exchange_not_placed), refunded as a return
        without one is (_refund_units, under the refund step's keys), once its order's history says
        why and the shipping its credit claimed is released (Order.release_shipping_claim: the
        refund that brings the order back decides it, this one's or another's), and so is what its
        credit held (Order.release_credit). One a concurrent
        run placed the replacement of (or settled) meanwhile is its exchange."""
        if item.exchange_not_placed is None or item.status is not R.RECEIVED:
            return self.exchange(item.id, actor)
        self._note(item)
        at = self._clock()
        modify(self._orders, item.order_id, lambda order: order.release_shipping_claim(item.id, at=at))
        modify(self._orders, item.order_id, lambda order: order.release_credit(item.id, at=at))
        return self._refund_units(item, actor, f"return {item.id}, exchange not placed ({item.exchange_not_placed})")

    def _decided(self, item: Return, original: Order, token: str) -> tuple[Return, PlaceOrder | None]:
        """`item` once its replacement is to be placed, and the command this run checked for it
        (None: decided before). One a run placed is found under its id; one that passes every check
        of the capture path, stock included, is decided in one conditional write on the return
        (Return.placing_exchange). A concurrent run's give-up written first stands (that return is
        answered: it is refunded instead); once decided, no run's stock check gives it up (its
        workflow reserves what is there, or gives the credit back). NOT_PLACEABLE when the
        replacement can never be placed."""
        if item.exchange_placing or item.exchange_order_id:
            return item, None
        placed = self._placed_replacement(item, original)
        if placed is not None:
            self._mine(placed, item)
            return item, None
        cmd = self._replacement_command(item, original, token)
        assert self._capture is not None  # _replacement_command refused an OMS without it
        try:
            self._capture.quote(cmd)
        except InsufficientStock:
            # Giving the exchange up for stock is for good (its units are refunded instead): said
            # only on stock as written, not on a plain read that may not show a restock yet.
            self._capture.quote(cmd, consistent_stock=True)
        at = self._clock()

        def decide(current: Return) -> Return:
            decided = current.exchange_not_placed or current.exchange_placing or current.exchange_order_id
            return current if decided or current.status is not R.RECEIVED else current.placing_exchange(at=at)

        return self._change(item.id, None, decide), cmd

    def _replacement_command(self, item: Return, original: Order, token: str) -> PlaceOrder:
        """The capture command of the exchange's replacement: its lines, with the original's
        channel, customer, address, fulfillment, shipping method (the shop's default when that is
        no longer offered) and payment."""
        assert item.exchange is not None
        if self._capture is None:
            raise InvalidRequest("this OMS places no exchanges", code="exchange_not_supported")
        external_id = _replacement_external_id(item, original)
        return self._shipped_anyway(_replacement_command(original, item.exchange, token, external_id=external_id))

    def _shipped_anyway(self, cmd: PlaceOrder) -> PlaceOrder:
        """A replacement's `cmd`, shipped the way a new order without a method would be when the
        shop stopped offering the original's method: the customer has no method to choose on a
        return, so the exchange neither is refused for it nor waits for an operator."""
        assert self._capture is not None
        try:
            self._capture.price(cmd)
        except UnknownShippingMethod:
            return cmd.model_copy(update={"shipping_method": None})
        return cmd

    def _replacement(
        self, item: Return, original: Order, token: str, actor: str, checked: PlaceOrder | None = None
    ) -> Order:  # fmt: skip
        """The replacement of an exchange decided to be placed (_decided): the one a run placed, or
        a new one (_replacement_command, or `checked`: the command this run decided on) with the
        returned units' refund as its credit."""
        placed = self._placed_replacement(item, original)
        if placed is not None:
            return self._mine(placed, item)
        cmd = checked or self._replacement_command(item, original, token)
        assert self._capture is not None  # _replacement_command refused an OMS without it
        if any(r.status == RefundStatus.PENDING and r.return_id != item.id for r in original.payment.refunds):
            # The credit is capped by what is refundable: a pending refund holds what, refused, it frees.
            original = self._finish_pending(item, original, actor, besides_return=item.id)
        original = self._claim_shipping(item, original)
        original = self._hold_credit(item, original)
        credit = original.credit_holds[item.id]
        earlier = self._credits.left(original)
        if earlier is not None:
            # `original` is itself a replacement: its captures paid only the difference, and the rest
            # of the units' value is still in its own credit, which carries over (not charged twice).
            carried = self._due(item, original, capped=False) - credit
            credit = credit + max(min(carried, earlier), Money.zero(original.currency))
        try:
            return self._capture.place_exchange(cmd, credit, original.id, item.id, actor)
        except DuplicateOrder as duplicate:
            # A concurrent run placed it between the read and the put: the first one stands.
            placed = self._orders.get(duplicate.order_id)
            if placed is None:
                raise
            return self._mine(placed, item)

    def _claim_shipping(self, item: Return, original: Order) -> Order:
        """The original with the shipping the exchange's credit gives back claimed (_shipping_due,
        decided in the claim's conditional write, as a refund's is in its own), once: a refund of
        another return deciding meanwhile counts it, and a retried step finds the claim. Never once
        the credit is held (_hold_credit), which was decided without it: a step that died placing the
        replacement, retried after the rest of the order was cancelled, would claim a shipping the
        credit does not give (it is refunded on the order instead: core.refunds.kept_back_owed)."""
        returns = self._returns.for_order(item.order_id)
        at = self._clock()

        def claim(current: Order) -> Bookkeeping | None:
            if item.id in current.shipping_claims or item.id in current.credit_holds:
                return None
            shipping = self._shipping_back(item, current, returns)
            return current.claim_shipping(item.id, shipping, at=at) if shipping.amount > 0 else None

        return modify(self._orders, original.id, claim)

    def _hold_credit(self, item: Return, original: Order) -> Order:
        """The original holding what the exchange's credit takes of its captured money (the
        returned units' refund, _due), decided in the hold's conditional write (Order.hold_credit),
        once: a refund deciding meanwhile leaves the credit what is left, an appeasement after it
        cannot refund it too, and a retried step finds the credit it decided. What of the units'
        worth the credit could not take is kept back with it (Order.returns_kept_back; _kept_back),
        but on an original that is itself a replacement, whose own credit carries it (_replacement)."""
        at = self._clock()

        def hold(current: Order) -> Bookkeeping | None:
            if item.id in current.credit_holds:
                return None
            credit = self._due(item, current)
            uncapped = None if current.exchange_of else (lambda order: self._due(item, order, capped=False))
            kept = _kept_back(current, item.id, credit, Money.zero(current.currency), uncapped)
            return current.hold_credit(item.id, credit, at=at, kept_back=kept)

        return modify(self._orders, original.id, hold)

    def _placed_replacement(self, item: Return, original: Order, consistent: bool = False) -> Order | None:
        """The order under the external_id of `item`'s replacement, if any; for an original whose
        external_id was too long to carry the suffix whole, also the one an earlier version placed
        for this return under its cut form (_cut_replacement_external_id), so a run across the
        deploy does not place a second replacement."""
        external_id = _replacement_external_id(item, original)
        placed = self._orders.get(order_id_for(original.channel, external_id), consistent=consistent)
        cut = _cut_replacement_external_id(item, original)
        if placed is None and cut != external_id:
            earlier = self._orders.get(order_id_for(original.channel, cut), consistent=consistent)
            if earlier is not None and earlier.exchange_of == item.id:
                return earlier
        return placed

    @staticmethod
    def _mine(placed: Order, item: Return) -> Order:
        if placed.exchange_of != item.id:
            raise ExchangeIdTaken(f"order {placed.id} has the external_id of return {item.id}'s replacement")
        return placed

    def check_received(self, return_id: str) -> Return:
        """The workflow's first step: the receipt the API recorded is there (ReturnNotReceived, not
        retried, when an execution was started for a return that was never received)."""
        return self._received(return_id)

    def _received(self, return_id: str) -> Return:
        """The return a workflow step works on, received (or refunded already); ReturnNotReceived
        otherwise, said only on a consistent read: the receipt's request starts the workflow just
        after writing it, which a plain read may not show yet, and ReturnNotReceived is not retried
        (the execution records the return stuck for a person)."""
        item = self.get(return_id)
        if item.status not in (R.RECEIVED, R.REFUNDED):
            item = visible_return(self._returns.get(return_id, consistent=True), return_id, None)
        if item.status not in (R.RECEIVED, R.REFUNDED):
            raise ReturnNotReceived(f"return {return_id} is {item.status}, not received")
        return item

    def stuck(self, return_id: str, error: str, cause: str, actor: str, execution: str = "") -> None:
        """The workflow's compensation: a step failed after its retries. What the earlier steps
        did stays (the units are physically back; a refund is money the gateway gave), so the
        order's history records where it stopped and why, for a person; receiving the return
        again resumes it. Once per `execution` (its name): Step Functions runs this step again
        when its answer is lost after the entry was written."""
        item = self.get(return_id)
        if not (execution and self._stuck_recorded(item, execution)):
            at = self._clock()
            # The Catch's Cause is the Lambda's error JSON, its stack trace in it: only the message
            # of the OMS's own errors is kept. Another's (botocore's, Lambda's, a bug's) may name the
            # AWS account, roles and tables, and the order's history is a storefront's to read: it
            # stays in the step's log line and the execution's history.
            message = caught_message(cause) if is_own_error(error) else ""
            detail = {"return_id": item.id, "status": item.status.value, "error": error[:200], "message": message}
            if execution:
                detail["execution"] = execution
            modify(
                self._orders, item.order_id,
                lambda order: order.noted(OrderEvent.RETURN_STUCK, at=at, actor=actor, detail=detail),
            )  # fmt: skip
        if item.status is R.RECEIVED:
            # This record may change how the returns pass judges the return (its refund now waits
            # for a payment plugin), and a return the pass set aside as left to a person is read by
            # it only once written again: a person's receipt of it again writes nothing. Written
            # after the record, so a pass that judged it on the history before cannot set it aside
            # again (ReceivedReturns.set_aside is conditional on the version). A rare path. Once per
            # execution too: a retry finding it listed by this one writes nothing (a pass may have
            # set it aside since); one whose first run died before this write lists it.
            self._change(
                item.id, None,
                lambda r: r.listed_again(execution) if r.status is R.RECEIVED and not r.listed_by_execution(execution)
                else r,
            )  # fmt: skip

    def _stuck_recorded(self, item: Return, execution: str) -> bool:
        found = self._orders.history(item.order_id, consistent=True)
        return found is not None and any(
            entry.type is OrderEvent.RETURN_STUCK
            and (entry.detail or {}).get("return_id") == item.id
            and (entry.detail or {}).get("execution") == execution
            for entry in found[1]
        )

    # --- History ----------------------------------------------------------------------------
    def owed_entries(self, order: Order) -> list[HistoryEntry]:
        """Write on `order`'s history the entries its returns' requests, approvals, rejections and
        expiries owe it and it lacks (a writer died between the return's change and the order's
        entry: nothing else would look again); the entries written. The history's reader calls it."""
        written: list[HistoryEntry] = []
        for item in self._returns.for_order(order.id):
            written += self._note(item, order)
        return written

    def _noted(self, item: Return, actor: str, order: Order | None = None) -> None:
        """_note, then the label bookings it gave up cancelled with the carrier at once."""
        given_up: list[GivenUpBooking] = []
        self._note(item, order, given_up)
        self._cancel_labels(item.order_id, given_up, actor)

    def _note(
        self, item: Return, order: Order | None = None, given_up: list[GivenUpBooking] | None = None
    ) -> list[HistoryEntry]:
        """Each entry `item` owes its order (Return.order_entries) on the order's history, once
        (Order.return_noted); the entries written by this call. `order`: the order as read, which
        spares a read when it has them all (one it lacks is decided on the order as written).
        Each such write judges the order's return label bookings no return records on `item`
        (judged_labels), and the expiry's gives up the label the return shows: those given up are
        added to `given_up`. Bookings kept after those writes (or with no entry owed) are judged
        in a write of their own."""
        if not item.order_entries:
            return []
        order = order or self._orders.get(item.order_id)
        written: list[HistoryEntry] = []
        gone: list[GivenUpBooking] = []
        for entry in item.order_entries:
            if order is not None and order.has_return_entry(item.id, entry.type):
                continue
            at = self._clock()

            def decide(order: Order, entry: OrderEntry = entry, at: datetime = at):
                unrecorded, gone[:] = judged_labels(item, order.unrecorded_return_labels)
                own = label_booking(item) if entry.type is OrderEvent.RETURN_CANCELLED else None
                if own is not None and own.booking_key not in {booking.booking_key for booking in gone}:
                    gone.append(own)  # an expired return's label: nothing will use it
                change = order.return_noted(
                    item.id, entry.type, at=at, actor=entry.actor, detail=entry.detail,
                    unrecorded_labels=unrecorded, labels_given_up=gone,
                )  # fmt: skip
                if change is None:
                    gone.clear()
                else:
                    written.append(change[1])
                return change

            order = modify(self._orders, item.order_id, decide)
            if given_up is not None:
                given_up += gone
        unrecorded = order.unrecorded_return_labels if order is not None else []
        if judged_labels(item, unrecorded)[0] != unrecorded:
            gone = self._labels_judged(item)
            if given_up is not None:
                given_up += gone
        return written


def _kept_back(
    order: Order, return_id: str, amount: Money, went: Money, uncapped: Callable[[Order], Money] | None
) -> Money | None:  # fmt: skip
    """What of return `return_id`'s worth (`uncapped(order)`, less what refused attempts of it gave
    back all the same: `went`) a refund (or an exchange's credit) of `amount` leaves kept back,
    captured minus refunded having fallen short of it (an appeasement took part of what its units
    were captured for): refunded once a later parcel's capture makes it refundable
    (UnitCancellation.refund_kept_back). None when `amount` is all of it; worked out only when the
    cap can have bound, `amount` taking all that is refundable."""
    if uncapped is None or amount < order.refundable(besides_return=return_id):
        return None
    kept = uncapped(order) - went - amount
    return kept if kept.amount > 0 else None


def _answered_returns(order: Order, finished: list[Refund]) -> list[str]:
    """The returns that show what went back for them once `finished` (refunds a step finished) were
    answered: those they name, and, for one naming no return (what an exchange's credit kept back),
    the exchanges' returns whose credit kept something back (kept_back_owed)."""
    answered = [r for r in finished if r.status != RefundStatus.PENDING]
    shown = [r.return_id for r in answered if r.return_id]
    if any(r.return_id is None for r in answered):
        shown += [owed.return_id for owed in kept_back_owed(order) if owed.names is None]
    return list(dict.fromkeys(shown))


def _went_back_before(order: Order, return_id: str) -> Money:
    """What refused refunds of return `return_id` gave back all the same: the parts of a split
    refund the gateway approved before it refused one (Payment.with_failed_refund)."""
    parts = [
        p
        for r in order.payment.refunds
        if r.return_id == return_id and r.status == RefundStatus.FAILED
        for p in r.parts or []
    ]
    return sum((p.amount for p in parts if p.status == RefundStatus.SUCCEEDED), Money.zero(order.currency))


def _refunded_before(returns: list[Return], besides: str, order: Order) -> tuple[dict[str, int], dict[str, Money]]:
    """Units of each line that earlier returns refunded, or are refunding (a refund of theirs is on
    the order, pending at the gateway or succeeded before the return was marked; an exchange's
    units became its credit), and what they gave back for them: what the order recorded for each
    return (core.refunds.given_back_for_units), and for units of a return it recorded nothing for
    (one whose fee took all of it before that was recorded, or one stored before returns' shares were recorded, or, of a
    replacement, before those its exchange's credit refunded whole were: Order.credit_refunded_shares)
    their share of the line as it is now, taken where that return came among the others (its
    ordinal), as units_share gave it then. A line's
    units refunded over several returns add up to exactly its total, whatever its price did between
    them, but for a volume price lost since the first were refunded: the payment is settled for it
    (core.refunds.refunded_short_of_lines)."""
    recorded = {return_id: shares for return_id, shares in given_back_for_units(order).items() if return_id != besides}
    refunding = {refund.return_id for refund in order.payment.refunds if refund.status != RefundStatus.FAILED}
    known = {item.id for item in returns}
    # Each return's units in the order they were asked for: (shares recorded, or units received).
    steps: list[tuple[list[RefundedUnits] | None, dict[str, int]]] = [
        (shares, {}) for return_id, shares in recorded.items() if return_id not in known
    ]
    for item in sorted(returns, key=lambda r: r.ordinal):
        if item.id == besides:
            continue
        if item.id in recorded:
            steps.append((recorded[item.id], {}))
        elif item.status is R.REFUNDED or item.id in refunding:
            steps.append((None, item.received()))
    by_id = {line.line_id: line for line in order.lines}
    units: dict[str, int] = {}
    given: dict[str, Money] = {}
    recorded_lines: set[str] = set()
    for shares, received in steps:
        for share in shares or []:
            units[share.line_id] = units.get(share.line_id, 0) + share.quantity
            given[share.line_id] = given.get(share.line_id, Money.zero(order.currency)) + share.amount
            recorded_lines.add(share.line_id)
        for line_id, quantity in received.items():
            before = units.get(line_id, 0)
            units[line_id] = before + quantity
            share = units_share(by_id[line_id], quantity, before)
            given[line_id] = given.get(line_id, Money.zero(order.currency)) + share
    return units, {line_id: amount for line_id, amount in given.items() if line_id in recorded_lines}


def _shipping_due(item: Return, order: Order, returns: list[Return], credited: Money | None = None) -> Money:
    """What of the order's shipping the refund of `item` gives back, decided on the order as the
    refund is written: nothing unless every unit the return asked for arrived, and never what the
    order's other refunds gave back of it already (core.refunds.shipping_refunded), nor what
    exchange credits that did not claim it gave (`credited`, Returns._credited_shipping), so it goes
    back once (a return's own refunds are what it is priced for: a replacement's return draws on
    its credit what its own refund did not give).
    The policy granted it for the return itself (`refund_shipping`), or for the receipt that
    brings the order's last unit back (`refund_shipping_with_whole_order`), counting only units
    that arrived on returns decided so: a return that counted on one that never arrives, or on
    units sent back for another reason, earns nothing."""
    zero = Money.zero(order.currency)
    asked = {line.line_id: line.quantity for line in item.lines}
    if item.received() != asked or not (item.refund_shipping or item.refund_shipping_with_whole_order):
        return zero
    if not item.refund_shipping:
        back = dict(item.received())
        arrived = (R.RECEIVED, R.REFUNDED)
        for other in returns:
            if other.id != item.id and other.refund_shipping_with_whole_order and other.status in arrived:
                for line_id, quantity in other.received().items():
                    back[line_id] = back.get(line_id, 0) + quantity
        if any(back.get(line.line_id, 0) < line.quantity for line in order.lines):
            return zero
    owed = order.totals.shipping - shipping_refunded(order, besides_return=item.id) - (credited or zero)
    return owed if owed.amount > 0 else zero


def _not_placed(item: Return, refused: DomainError) -> dict[str, Any]:
    """The detail of the `exchange_not_placed` entry of `item`'s exchange given up for `refused`."""
    # A pickup store's refusal is a plain validation_error at POST /orders: named here.
    code = PICKUP_NOT_OFFERED if isinstance(refused, PickupNotOffered) else refused.code
    return {"return_id": item.id, "code": code, "message": refused.message, "details": _of_exchange(refused)}


def _of_exchange(refused: DomainError) -> list[dict[str, Any]]:
    """`refused`'s details as they name the return request's fields: a replacement's `lines[i]`
    are its exchange's `exchange.lines[i]`."""
    return [
        {**detail, "field": "exchange." + detail["field"]}
        if str(detail.get("field", "")).startswith("lines")
        else detail
        for detail in refused.details
    ]


MAX_EXTERNAL_ID = 128  # the longest an external_id may be (core.models.IDENTIFIER_PATTERN)


def _replacement_external_id(item: Return, original: Order) -> str:
    """The external_id of a return's replacement: the original's (or its id) plus `-x` and the
    return's ordinal, so a retried step finds the order it placed. An external_id is at most 128
    characters: one too long to carry the suffix whole keeps its first characters and a hash of all
    of it, so two originals of a channel that share those first characters never name one
    replacement (one's exchange would be given up, `exchange_external_id_taken`)."""
    own = original.external_id or original.id
    suffix = f"-x{item.ordinal}"
    if len(own) + len(suffix) <= MAX_EXTERNAL_ID:
        return own + suffix
    tag = "-" + short_hash(own)[:12]
    return own[: MAX_EXTERNAL_ID - len(tag) - len(suffix)] + tag + suffix


def _cut_replacement_external_id(item: Return, original: Order) -> str:
    """The external_id an earlier version gave the replacement of an original whose own was too
    long: its first characters alone (_placed_replacement still finds what such a version placed)."""
    suffix = f"-x{item.ordinal}"
    return (original.external_id or original.id)[: MAX_EXTERNAL_ID - len(suffix)] + suffix


def _replacement_command(original: Order, exchange: ExchangeInput, token: str, external_id: str | None) -> PlaceOrder:
    """The capture command of an exchange's replacement: its lines, with the original's channel,
    customer, address, fulfillment, shipping method and payment."""
    try:
        return PlaceOrder(
            channel=original.channel, external_id=external_id, currency=original.currency,
            customer=original.customer, lines=exchange.lines,
            shipping_address=original.shipping_address.model_dump(),
            fulfillment=original.fulfillment,
            shipping_method=original.shipping_method if original.fulfillment.type == "ship" else None,
            payment=PaymentInput(method=original.payment.method, token=token),
        )  # fmt: skip
    except ValidationError as error:
        # Held to today's rules, as a new order's: a shipped original's address is no longer edited.
        raise refused_as_kept(error, KEPT_REFUSED) from None


def _units_on(returns: list[Return]) -> dict[str, int]:
    """Units of each line that earlier returns hold: what an open one asked for, and what a
    received one brought back (units it never brought back may come back on another return)."""
    units: dict[str, int] = {}
    for item in returns:
        if item.status in CLOSED:
            continue
        received = item.status in (R.RECEIVED, R.REFUNDED)
        for line in item.lines:
            units[line.line_id] = units.get(line.line_id, 0) + (line.received_quantity if received else line.quantity)
    return units


def return_destination(order: Order, line_ids: Collection[str], locations: list[Location]) -> str | None:
    """Where a return of `line_ids` goes back to (its `return_to`, the label's address): of the
    locations whose shipped or delivered parcels carried any of those lines, the nearest to where
    the order went (its address's coordinates; a pickup's store), or, when the address has none to
    measure to, one in its country before one abroad; then the one that shipped the most units of
    those lines; then the first by id. A location deleted since comes after every one there is (no
    label can be addressed to it). None when no parcel carried them."""
    shipped: Counter[str] = Counter()
    for shipment in order.shipments:
        if shipment.status in (ShipmentStatus.SHIPPED, ShipmentStatus.DELIVERED):
            for x in shipment.lines:
                if x.line_id in line_ids:
                    shipped[shipment.location_id] += x.quantity
    destination = destination_of(order, locations)
    by_id = {location.location_id: location for location in locations}

    def rank(location_id: str) -> tuple[bool, float, bool, int, str]:
        location = by_id.get(location_id)
        if location is None:
            return True, 0.0, True, -shipped[location_id], location_id
        distance = distance_km(location, destination)
        abroad = location.address.country != destination.country
        return False, distance or 0.0, abroad, -shipped[location_id], location_id

    return min(shipped, key=rank, default=None)
