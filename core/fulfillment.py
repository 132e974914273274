"""What happens to an order after the workflow: ship, deliver, cancel and edit, each idempotent."""

from __future__ import annotations

import contextlib
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterator, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from core import payment_keys
from core.access import refuse_elsewhere
from core.cancellation import (
    AUTHORIZATION_VALID_FOR,
    NOT_MADE,
    Cancellation,
    holding_locations,
    own_authorization_keys,
    parcel_units,
    units_leave,
)
from core.carrier_bookings import CarrierWork, give_up_unrecorded
from core.errors import (
    CaptureWithdrawn,
    Conflict,
    HandOverTimeRefused,
    InvalidTransition,
    NoPaymentPlugin,
    NotFound,
    ParcelWithdrawn,
    PaymentDeclined,
    PaymentGatewayUnavailable,
    PaymentPluginFailed,
    PaymentRefused,
    StaleVersion,
    TrackingNumberConflict,
    refused_as_kept,
)
from core.events import OrderEvent
from core.holds import give_back_or_note, give_back_surplus
from core.ids import reservation_key
from core.models import (
    Address,
    AuthorizationRequest,
    Change,
    GivenUpBooking,
    HistoryEntry,
    LineInput,
    Order,
    OrderEdit,
    OrderLine,
    PaymentInput,
    PlaceOrder,
    ReplacedLine,
    Shipment,
    reported_delivered_note,
    same_tracking_number,
    tracking_number_named,
    utc_now,
    utc_text,
)
from core.money import Money
from core.order_changes import (
    ATTEMPTS,
    answers_known,
    failure_recorder,
    modify,
    outage_noted_once,
    refused_keys,
    request_outage_noted_once,
    visible,
)
from core.payments import Payments
from core.ports import CatalogRepository, InventoryRepository, LabelStore, OrderRepository, ReturnRepository
from core.refund_service import RefundService
from core.refunds import KEPT_BACK_REFUSALS
from core.services import REVIEW_ACTOR, STOCK_COUNT_REASON, CaptureService
from core.status import TERMINAL, OrderStatus, PaymentStatus, ShipmentStatus
from core.unit_cancellation import UnitCancellation, owes_settlement_after_last_parcel
from core.workflow_types import PaymentResult

if TYPE_CHECKING:
    from core.exchange_credit import ExchangeCredits
    from core.workflow import Workflow

logger = logging.getLogger(__name__)
S = OrderStatus
Clock = Callable[[], datetime]
# A WMS whose clock runs a little fast (or that rounds its manifest's minute up) names a hand-over
# a moment ahead of ours: within this, the parcel left by the time the OMS heard, and that moment
# is recorded (nothing is recorded in the future); further ahead, the time is nobody's and refused.
HAND_OVER_CLOCK_SKEW = timedelta(seconds=60)
PICKUP_EXPIRY = timedelta(days=7)  # OMS_PICKUP_EXPIRY_DAYS (0: None, a pickup waits until collected)


class OrderActions:
    def __init__(
        self,
        orders: OrderRepository,
        catalog: CatalogRepository,
        inventory: InventoryRepository,
        payments: Payments,
        capture: CaptureService,
        clock: Clock = utc_now,
        refunds: RefundService | None = None,
        *,
        pickup_expiry: timedelta | None = PICKUP_EXPIRY,
        authorization_valid_for: timedelta = AUTHORIZATION_VALID_FOR,
        credits: ExchangeCredits | None = None,
        hook: Any | None = None,
        labels: LabelStore | None = None,
        returns: ReturnRepository | None = None,
        resourcing: Workflow | None = None,
    ):
        self._orders = orders
        # What sources a rejected parcel of a partly shipped order again (the workflow's sourcing);
        # None: such a reject is refused (409), as for any order that shipped something.
        self._resourcing = resourcing
        self._catalog = catalog
        self._inventory = inventory
        self._payments = payments
        self._capture = capture
        self._clock = clock
        self._pickup_expiry = pickup_expiry
        # A request anything repeated at will sends again (a delivery report, a ship, a cancel)
        # writes every failed attempt, but not a void's or capture's outage the order's history
        # ends with already (request_outage_noted_once): a carrier reporting again through it, or a
        # warehouse shipping again, would fill the order's item.
        self._cancellation = Cancellation(
            orders, catalog, inventory, payments, clock, credits, void_failures=request_outage_noted_once,
            authorization_valid_for=authorization_valid_for,
        )  # fmt: skip
        refunds = refunds or RefundService(orders, payments, clock)
        self._units = UnitCancellation(
            orders, catalog, inventory, payments, capture, refunds, self._cancellation, clock, credits,
            hook=hook, labels=labels, returns=returns, void_failures=request_outage_noted_once,
        )  # fmt: skip
        # What the reconciler's kept-back pass settles through (settle_owed): as the requests', but
        # a gateway outage is written in an order's history once, not once per failed attempt of
        # every pass (outage_noted_once), as the other passes write it.
        self._pass_units = UnitCancellation(
            orders, catalog, inventory, payments, capture, refunds,
            Cancellation(orders, catalog, inventory, payments, clock, credits, void_failures=outage_noted_once,
                         authorization_valid_for=authorization_valid_for),
            clock, credits, hook=hook, labels=labels, returns=returns, void_failures=outage_noted_once,
        )  # fmt: skip

    def _order(self, order_id: str, channel: str | None) -> Order:
        return visible(self._orders.get(order_id), order_id, channel)

    def _recorder(self, order_id: str, actor: str, **detail: object):
        return failure_recorder(self._orders, order_id, actor, self._clock, **detail)

    # --- Ship ---------------------------------------------------------------------------------
    def ship(self, order_id: str, shipment_id: str, tracking_number: str | None, actor: str,
             channel: str | None = None, shipped_at: datetime | None = None) -> Order:  # fmt: skip
        """The location handed the parcel over: the shipment's share of the payment is captured,
        then the shipment is recorded shipped with what the gateway captured, then its reserved
        units leave on_hand.

        `shipped_at`: when it was handed over, as a WMS's manifest says (a wave confirmed after its
        carrier's manifest closed), recorded as the shipment's `shipped_at` (and in its entry) in
        place of now, so a stock take recorded after it counted the parcel gone already
        (InventoryRepository.ship's `handed_at`). The capture is made now all the same: the
        gateway, not the manifest, says when money moves. Refused (HandOverTimeRefused) when later
        than now by more than HAND_OVER_CLOCK_SKEW (within it, the time of the ship's write:
        Order.ship records no time after that), or before the entry that made
        the parcel (_made_before), whether or not it shipped already: no parcel left then. A parcel
        shipped already keeps the time first recorded: its units left on that time, so another one
        sent again changes nothing, as a ship repeated.

        The capture comes first, so the order never says shipped and paid for money the gateway
        did not give, and the order records that it asks for it before it does
        (Order.request_capture), so a capture the gateway makes is never lost: a ship that dies after
        the gateway answered is repeated under the same key and records it, a cancel, a reject or
        a cancel of units meanwhile refunds it first (Cancellation.settle_capture_requests), an
        edit waits for it (409), and on an order nobody ships again the jeopardy scan's handler
        refunds it once the order is late and holds the order for a person to confirm whether the
        parcel left (core.capture_sweep). An authorization the gateway may have let lapse
        (OMS_AUTHORIZATION_VALID_DAYS), or that a capture was refused on or given back, is renewed
        before the capture is requested (Cancellation.renewed_if_lapsed). A capture that keeps
        failing transiently (PaymentGatewayUnavailable, 503) or is refused (PaymentRefused, 502)
        leaves the shipment pending with every failed attempt in the history (a refusal the history
        ends with already, the same ship repeated on a loop, only once: Cancellation.refusal_recorded_last;
        an outage it ends with already, none: request_outage_noted_once),
        and the ship may simply be repeated (after a refusal, on a renewed authorization: once, not
        on one a refusal made, Order.refusal_renewal). A capture whose record then loses to a cancel, a hold or a
        reject is refunded at once and the ship is refused (409). Shipping a shipped shipment again finishes
        what its first ship may have left undone (a request that died after the write): its stock
        movement (idempotent by reservation key) and, after the last parcel, the settlement of an
        order that lost units (after_shipping, which a gateway that was down could not make then);
        nothing else. Sent with another tracking number than the one recorded, it sets it if no
        ship named one (the parcel kept its booking's: the warehouse learnt the carrier's number
        after the hand-over), once, and is refused otherwise (TrackingNumberConflict, 409: a
        corrected number is not answered as if it took): _numbered_as_asked. A pickup never
        ships, so a ship of one is refused (409) whatever its status: collected, it is delivered
        without having shipped. A parcel a carrier reported delivered before its ship was recorded
        (Order.report_delivered) is recorded delivered too, at the carrier's time, and so is one
        its carrier scanned delivered before this ship (Order.keep_delivery_scan)."""
        done = (ShipmentStatus.SHIPPED, ShipmentStatus.DELIVERED)
        # The clock is read for a stated time only: a ship without one reads it as it always did.
        if shipped_at is not None and shipped_at > (now := self._clock()) + HAND_OVER_CLOCK_SKEW:
            raise HandOverTimeRefused(f"shipped_at {utc_text(shipped_at)} is later than now ({utc_text(now)})")

        def record(current: Order, amount: Money, reference: str | None, at: datetime):
            return current.ship(
                shipment_id, tracking_number=tracking_number, captured=amount, capture_reference=reference,
                at=at, actor=actor, shipped_at=shipped_at,
            )  # fmt: skip

        def shippable(current: Order) -> None:
            if current.fulfillment.type == "pickup" or current.shipment(shipment_id).status not in done:
                current.ready_to_ship(shipment_id)

        with self._refused_if_withdrawn(order_id, shipment_id, channel):
            order = self._checked(order_id, channel, shippable)
            shipping = order.shipment(shipment_id).status not in done  # this ship records it (or a concurrent one)
            if shipped_at is not None:
                self._made_before(order, shipment_id, shipped_at)
            shipped = self._hand_over(order, shipment_id, actor, channel, done, record)
        if tracking_number is not None and (
            not shipping or not same_tracking_number(shipped.shipment(shipment_id).tracking_number, tracking_number)
        ):
            shipped = self._numbered_as_asked(shipped, shipment_id, tracking_number, actor, channel)
        if shipped.reported_delivered and shipped.reported(shipment_id) is not None:
            # A carrier reported it delivered before its ship was recorded (Order.report_delivered):
            # whoever ships it, it is recorded delivered too, at the carrier's time.
            return self.deliver(order_id, shipment_id, actor, channel)
        if shipped.delivery_scans and shipped.delivery_scan(shipment_id) is not None:
            # Its carrier scanned it delivered before this ship (Order.keep_delivery_scan): delivered
            # now, at the carrier's time (a ship repeated after a death here finishes it too).
            return self.deliver(order_id, shipment_id, actor, channel)
        return shipped

    def _made_before(self, order: Order, shipment_id: str, shipped_at: datetime) -> None:
        """Refuse a hand-over time before the OMS made the parcel (the last entry of the order's
        history naming it among those it made, _made; the order's placing when none does): it
        cannot have left before it existed. One read of the history, for a ship stating its time."""
        found = self._orders.history(order.id, consistent=True)
        made = max((entry.at for entry in found[1] if _made(entry, shipment_id)), default=None) if found else None
        made = made or order.created_at
        if shipped_at < made:
            raise HandOverTimeRefused(
                f"shipped_at {utc_text(shipped_at)} is before the OMS made shipment {shipment_id} ({utc_text(made)})"
            )

    def _numbered_as_asked(
        self, order: Order, shipment_id: str, tracking_number: str, actor: str, channel: str | None
    ) -> Order:
        """The shipped parcel with the tracking number a ship names (none named: any). One whose
        ship named none, so it kept its booking's (or has none), takes the number named now, once
        (Order.set_tracking_number: a warehouse that confirms the hand-over first and reads the
        carrier's number later), and one that names the number it has confirms it (an entry, the
        order unchanged); another number than one a location named is refused
        (TrackingNumberConflict, 409: a correction is not answered as if it took). Judged on the
        order's history (tracking_number_named), read only for a ship naming a number of a parcel
        shipped before it (sent again), or shipped meanwhile under another: never on a first ship
        that records the number it names. None named: any number, nothing read."""
        recorded = order.shipment(shipment_id).tracking_number
        found = self._orders.history(order.id, consistent=True)
        named = found is None or tracking_number_named(found[1], shipment_id, recorded)
        if same_tracking_number(tracking_number, recorded):
            # The same number, in whatever case or spacing (same_tracking_number): kept as first stored.
            if not named:
                # The label's number, named now: confirmed, so no later number replaces it. An
                # entry, no new version: the order is unchanged, as a ship sent again leaves it.
                confirmed = {"shipment_id": shipment_id, "tracking_number": recorded}
                modify(self._orders, order.id, lambda current: current.noted(
                    OrderEvent.SHIPMENT_TRACKING_NUMBER_CONFIRMED, at=self._clock(), actor=actor, detail=confirmed,
                ) if current.shipment(shipment_id).tracking_number == recorded else None,
                    channel=channel)  # fmt: skip
            return order
        if named:
            raise TrackingNumberConflict(shipment_id, recorded)
        at = self._clock()

        def decide(current: Order):
            now = current.shipment(shipment_id).tracking_number
            if same_tracking_number(now, tracking_number):
                return None  # a concurrent ship set it
            if now != recorded:
                raise TrackingNumberConflict(shipment_id, now)  # a concurrent ship set another
            return current.set_tracking_number(shipment_id, tracking_number, at=at, actor=actor)

        return modify(self._orders, order.id, decide, channel=channel)

    def _checked(self, order_id: str, channel: str | None, check: Callable[[Order], None]) -> Order:
        """The order, once `check` (which raises to refuse) passes on it. A plain read may predate
        the change that lets it pass (a release, a pickup readied, a moment before: the item before
        it in a batch), so a refusal is decided again on a consistent read, as modify decides."""
        try:
            order = self._order(order_id, channel)
            check(order)
        except (NotFound, Conflict):
            order = visible(self._orders.get(order_id, consistent=True), order_id, channel)
            check(order)
        return order

    @contextlib.contextmanager
    def _refused_if_withdrawn(self, order_id: str, shipment_id: str, channel: str | None) -> Iterator[None]:
        """A location's confirmation (ship, deliver, ready) of a parcel its order had until a change
        withdrew it (a stock take that counted fewer units than it held, its own or another
        location's reject, an edit: the order went back to be sourced) is refused as the ship that
        change overtook is (_still_there: InvalidTransition, 409), naming the change in the
        history (`withdrawn_by`), not as an unknown id (404): the parcel may have left, and a
        warehouse answered `not_found` checks its ids instead of calling a person. Read only on the
        refusal (the order's history, consistently); the shipment an order never had, and another
        channel's order, stay NotFound."""
        try:
            yield
        except NotFound:
            found = self._orders.history(order_id, consistent=True)
            if found is None or (channel is not None and found[0].channel != channel):
                raise
            order, history = found
            if any(s.id == shipment_id for s in order.shipments):
                raise  # back on the order meanwhile (sourced again from the same location)
            withdrawn = _withdrawal(order, history, shipment_id)
            if withdrawn is None:
                raise
            raise withdrawn from None

    def _hand_over(
        self, order: Order, shipment_id: str, actor: str, channel: str | None,
        done: tuple[ShipmentStatus, ...], record: Callable[[Order, Money, str | None, datetime], Change],
    ) -> Order:  # fmt: skip
        """Ship or collect `shipment_id`: request its capture, capture it, `record` it, then its
        units leave and the payment is settled (after_shipping). A shipment `done` already only
        gets those last two."""
        fresh = False
        if order.shipment(shipment_id).status not in done:
            if order.capture_request(shipment_id) is None:
                order = self._cancellation.renewed_if_lapsed(order, actor)
            order, fresh = self._capture_requested(order, shipment_id, actor, done)
        if order.shipment(shipment_id).status in done:
            self._units_leave(order, shipment_id)
            return self._units.after_shipping(order, actor)
        request = order.capture_request(shipment_id)
        amount = request.amount if request else Money.zero(order.currency)
        try:
            capture = (
                self._cancellation.capture_share(order, shipment_id, amount, actor, unless_repeated=True)
                if request else None
            )  # fmt: skip
        except PaymentRefused as refused:
            assert request is not None  # nothing is asked of the gateway without one
            after = self._cancellation.capture_refused(
                order.id, shipment_id, request, refused, actor, fresh=fresh, unless_repeated=True
            )
            refused.renewed_when_repeated = after is not None and self._cancellation.renews_first(after)
            raise
        at = self._clock()

        def decide(current: Order):
            _still_there(current, shipment_id)
            if current.shipment(shipment_id).status in done:
                return None  # a concurrent ship of this shipment recorded it (the same capture: the same key)
            # The capture is recorded only under the request it was made for: one withdrawn (or
            # settled, and asked for again under a new key) meanwhile is refunded instead.
            taken_back = current.capture_request(shipment_id) != request or (
                current.captures_reversed(shipment_id) != order.captures_reversed(shipment_id)
            )
            if request is not None and taken_back:
                raise CaptureWithdrawn(f"the capture for shipment {shipment_id} was withdrawn: the order changed")
            new, entry = record(current, amount, capture.reference if capture else None, at)
            # The last parcel of an order that lost units (or whose edit left its authorization
            # larger, or a replacement's, its credit not all used): the payment is settled after
            # this write (after_shipping), and that is recorded owed with it, should this function
            # die first: a carrier that never reports delivery would leave it undone for good.
            return (new.owing_settlement() if owes_settlement_after_last_parcel(new) else new), entry

        try:
            # On the order as the capture request left it (written or read just now): a change since
            # makes the write lose, and it is decided again on a consistent read.
            handed = modify(self._orders, order.id, decide, channel=channel, read=order)
        except InvalidTransition:
            if capture is not None:
                with contextlib.suppress(*NOT_MADE):
                    # A refund that fails is in the history; the request stands for the next try.
                    self._cancellation.reverse_capture(order, shipment_id, amount, capture, actor)
            raise
        self._units_leave(handed, shipment_id)
        if any(not handed.capturing_under(a) for a in handed.replaced_authorizations):
            # Nothing more is captured on an authorization a renewal (or an edit) replaced once no
            # capture asked under it stands (this one was the last, or it was refused): what it
            # holds is released now, not when the last parcel ships. A void that fails leaves it
            # replaced, for those to void; one the gateway refused is not asked by every ship.
            with contextlib.suppress(*NOT_MADE):
                handed = self._cancellation.void_replaced_authorizations(handed, actor, unless_refused=True)
        return self._units.after_shipping(handed, actor)

    def _capture_requested(self, order: Order, shipment_id: str, actor: str,
                           done: tuple[ShipmentStatus, ...]) -> tuple[Order, bool]:  # fmt: skip
        """The order with the shipment's capture requested (Order.request_capture), and whether
        this call made the request: a request left standing by a ship that died (or one in flight)
        is reused, so its capture is asked again under the same key for the same amount, which the
        gateway answers with the capture it made. Nothing is requested when nothing is due, or once
        the shipment is `done`."""
        at = self._clock()
        requested: list[bool] = []  # whether the write that landed made the request (the last decide's)

        def decide(current: Order):
            requested.clear()
            if current.shipment(shipment_id).status in done or current.capture_request(shipment_id) is not None:
                return None
            amount = current.capture_due(shipment_id)
            if amount.amount <= 0:
                return None
            requested.append(True)
            return current.request_capture(shipment_id, amount, at=at)

        current = modify(self._orders, order.id, decide, read=order)
        request = current.capture_request(shipment_id)
        if request is not None and request.withdrawn:
            raise CaptureWithdrawn(
                f"the capture for shipment {shipment_id} is being given back while the order changes; ship again after"
            )
        return current, bool(requested)

    def _units_leave(self, order: Order, shipment_id: str) -> None:
        """The shipment's units leave on_hand, and no more (units_leave: a reservation holding more
        than the parcel carries, left so by a cancel of units whose stock step had not run or never
        ran, gives the rest back first). A stock take recorded since it was handed over counted them
        out already: only its reservations go (InventoryRepository.ship)."""
        shipment = order.shipment(shipment_id)
        units_leave(self._inventory, parcel_units(order, [shipment]), shipment.handed_over_at)

    # --- Deliver ------------------------------------------------------------------------------
    def deliver_or_collect(self, order_id: str, shipment_id: str, actor: str, channel: str | None = None) -> Order:
        """`POST .../deliver`: a shipped parcel arrived (`deliver`), or a pickup order's parcel was
        collected at its store (`collect`: a pickup is never shipped, and whether it waits ready is
        for collect to decide, on a consistent read when a plain one shows it pending). A carrier's
        tracking calls `deliver` only: no carrier hands over a pickup, so its webhook can never
        capture one. A collected pickup goes to `collect` again, which finishes what the first
        collect left undone. A parcel a change withdrew from the order is refused as a ship of it is
        (_refused_if_withdrawn)."""
        with self._refused_if_withdrawn(order_id, shipment_id, channel):
            order = self._order(order_id, channel)
            if order.fulfillment.type == "pickup":
                return self.collect(order_id, shipment_id, actor, channel)
            return self.deliver(order_id, shipment_id, actor, channel, read=order)

    def deliver(self, order_id: str, shipment_id: str, actor: str, channel: str | None = None,
                delivered_at: datetime | None = None, read: Order | None = None) -> Order:  # fmt: skip
        """A shipped parcel arrived (at `delivered_at`, when a carrier's tracking says when). Then,
        as a ship repeated does, the payment of an order with nothing left to ship is settled if a
        gateway that was down left it short of its total (a cancel of the rest whose capture of it
        failed): a delivered order ends paid in full.

        A parcel still `pending` because its ship died after asking for its capture is proof it
        left: it is marked so and shipped first (_ship_reported_delivered), then delivered, both at
        the carrier's time. Any other pending parcel is refused (InvalidTransition, 409) as before:
        nothing says the location handed it over. That ship refused its capture (PaymentRefused: the
        gateway's answer, not a missing plugin) is recorded as the delivery not recorded
        (_delivery_not_recorded), then raised: the parcel stays marked, so nothing puts its units
        back on sale. `read`: the order as the caller read it a moment ago (modify's `read`)."""

        def decide(order: Order):
            if order.shipment(shipment_id).status is ShipmentStatus.DELIVERED:
                return None
            return order.deliver(shipment_id, at=self._clock(), actor=actor, delivered_at=delivered_at)

        try:
            delivered = modify(self._orders, order_id, decide, channel=channel, read=read)
        except InvalidTransition:
            # The rare path only: the typical delivery reads and writes as before.
            try:
                shipped = self._ship_reported_delivered(order_id, shipment_id, actor, channel, delivered_at)
            except NoPaymentPlugin:
                raise  # nobody asked the gateway: sent again once the plugin is back, it ships
            except PaymentRefused as refused:
                self._delivery_not_recorded(order_id, shipment_id, str(refused), actor)
                raise
            if not shipped:
                raise
            # Delivered by the time the report's mark holds (Order.deliver), validated when it was made.
            delivered_at = None
            delivered = modify(self._orders, order_id, decide, channel=channel)
        return self._units.after_shipping(delivered, actor, delivered=True)

    def deliver_scanned(self, order_id: str, shipment_id: str, actor: str, channel: str | None = None,
                        delivered_at: datetime | None = None) -> Order:  # fmt: skip
        """A carrier's tracking scanned the parcel delivered (at `delivered_at`): delivered as
        `deliver` does. A pending parcel nobody has confirmed shipped (deliver refuses it) keeps the
        scan instead (Order.keep_delivery_scan, at the carrier's time when it is believable:
        reported_at), so the ship that confirms it delivers it then; nothing is captured on the
        carrier's word. The refusal is raised all the same (InvalidTransition: not shipped), once
        the scan is kept; a scan sent again changes nothing. A parcel a change withdrew from its
        order is refused as its location's delivery is (_refused_if_withdrawn: ParcelWithdrawn,
        naming what withdrew it), not as an unknown id: the carrier has it, a person settles it."""
        with self._refused_if_withdrawn(order_id, shipment_id, channel):
            try:
                return self.deliver(order_id, shipment_id, actor, channel, delivered_at=delivered_at)
            except InvalidTransition:
                now = self._clock()

                def decide(current: Order):
                    shipment = current.shipment(shipment_id)
                    if (
                        current.fulfillment.type == "pickup" or shipment.status is not ShipmentStatus.PENDING
                        or current.delivery_scan(shipment_id) is not None or current.reported(shipment_id) is not None
                        or current.status in TERMINAL
                    ):  # fmt: skip
                        return None
                    return current.keep_delivery_scan(
                        shipment_id, reported_at(current, delivered_at, now), at=now, actor=actor
                    )

                modify(self._orders, order_id, decide, channel=channel)
                raise

    def refuse_parcel_elsewhere(
        self, order_id: str, shipment_id: str, channel: str | None, location_ids: Collection[str] | None
    ) -> None:
        """Forbidden (403) when a key bound to `location_ids` confirms, rejects or readies a parcel of
        another location: where it is, or for one a change withdrew, where it was (the action would
        refuse that one 409 naming the withdrawal, which tells another location's key what
        happened there). Checked before the action reads or writes anything. A parcel read stale
        (just made) is looked for again consistently: let through unread, the action's own
        consistent read would find it and act. An order the caller may not see, or a parcel it
        never had, is NotFound, as the action answers it. Nothing is read for an unbound key."""
        if location_ids is None:
            return
        try:
            location_id = self.parcel(order_id, shipment_id, channel).location_id
        except ParcelWithdrawn as withdrawn:
            location_id = str(withdrawn.details[0]["location_id"])
        except NotFound:
            order = visible(self._orders.get(order_id, consistent=True), order_id, channel)
            location_id = order.shipment(shipment_id).location_id
        refuse_elsewhere(location_ids, location_id)

    def parcel(self, order_id: str, shipment_id: str, channel: str | None = None) -> Shipment:
        """The parcel a carrier's in-transit scan names, read only (such scans are stored nowhere).
        NotFound for one the caller may not see, or the order never had; ParcelWithdrawn for one a
        change withdrew from its order (_refused_if_withdrawn): it left all the same, a person settles it."""
        with self._refused_if_withdrawn(order_id, shipment_id, channel):
            return self._order(order_id, channel).shipment(shipment_id)

    def _ship_reported_delivered(
        self, order_id: str, shipment_id: str, actor: str, channel: str | None, delivered_at: datetime | None
    ) -> bool:
        """Ship the pending parcel a carrier reported delivered (by `delivered_at`, when it says
        and it is believable: reported_at) while its fate was unknown, as a ship would (its capture
        asked under the request standing, which the gateway answers with the capture it made, or
        anew once the scan refunded it). First the report is written (Order.report_delivered): the
        parcel marked, and the system's hold that waited for a person to confirm it released in
        that same write, so a function that dies before the ship leaves a parcel nothing can put
        back on sale (Order.check_parcels_reported), whose report sent again (or a ship of it) ships it.
        Whether it did (False: nothing done, the delivery is refused as before: no such hold or
        standing request, a person's hold, or a person's release that won the race for the hold,
        after which the report is what it would be had it come second). A parcel marked already is
        shipped (and, marked and held for again, its hold released). The report that ends the hold
        ships the parcels reports marked while it waited for others too (nobody reports them
        again). InvalidTransition when the report is recorded but the order stays held for other
        parcels a person is to confirm: it ships once that hold ends (the report that ends it, or a
        ship of it after a person's release, which records it delivered too: OrderActions.ship)."""
        at = self._clock()

        def decide(current: Order):
            if current.reported(shipment_id) is not None and not current.delivery_confirms(shipment_id):
                return None
            return current.report_delivered(shipment_id, reported_at(current, delivered_at, at), at=at, actor=actor)

        others: list[str] = []  # other parcels reported while the hold waited for a person
        try:
            marked = modify(self._orders, order_id, decide, channel=channel)
        except InvalidTransition:
            # Released by a report before reports were marked (its function died before the ship).
            if not self._released_by_report(order_id, shipment_id):
                return False
        else:
            if marked.shipment(shipment_id).status is not ShipmentStatus.PENDING:
                return True  # shipped meanwhile: delivered as any shipped parcel
            if marked.status is S.ON_HOLD:
                waiting = marked.parcels_to_confirm()
                question = f" for a person to confirm whether {', '.join(waiting)} left" if waiting else ""
                raise InvalidTransition(
                    f"the carrier's report that shipment {shipment_id} arrived is recorded (the parcel left), but "
                    f"order {order_id} stays on hold{question}: the parcel is shipped and delivered once that hold "
                    "is released",
                    details=[{"shipment_id": s, "message": "may have left: to be confirmed by a person"}
                             for s in waiting],
                )  # fmt: skip
            others = [s for s in marked.parcels_reported() if s != shipment_id]
        self.ship(order_id, shipment_id, None, actor, channel)
        for other in others:
            # Reported while the order was held for this one too (Order.report_delivered): nobody
            # reports it again. A ship that fails leaves it marked, its failure in the history, for
            # a person's ship (or its carrier's next report) to finish; one whose capture the gateway
            # refused is recorded as the reported parcel's is (_delivery_not_recorded): a person acts.
            try:
                self.ship(order_id, other, None, actor, channel)
            except NoPaymentPlugin:
                pass  # nobody asked the gateway: shipped once the plugin is back
            except PaymentRefused as refused:
                self._delivery_not_recorded(order_id, other, str(refused), actor)
            except (InvalidTransition, PaymentGatewayUnavailable, PaymentPluginFailed):
                pass
        return True

    def _delivery_not_recorded(self, order_id: str, shipment_id: str, message: str, actor: str) -> None:
        """A parcel reported delivered could not be shipped: the gateway refused its capture (or the
        renewal of the authorization it is asked on; in the history before this). The parcel left
        and its share is not captured: `delivery_not_recorded` (the shipment and the gateway's
        words), counted for DeliveriesNotRecordedAlarm, and an ERROR line naming the order and the
        shipment: one for each refusal the ship recorded. The parcel's mark says so in the same
        write (Order.note_delivery_not_recorded), so a person's cancel of its units may write it off.
        Not when this shipment's last refused capture entry (a refused attempt, the capture not made)
        is followed by its `delivery_not_recorded` already: the ship recorded nothing (the report
        sent again meets the refusal its caller met before, which is not recorded again:
        Cancellation.refusal_recorded_last and refusal_noted_once step over this entry, as they do
        over the refusals of parcels reported in turn); an attempt at its capture that failed
        transiently under a key the gateway refused is stepped over (core.order_changes.answers_known:
        the late one of a report sent twice at once, answered "key in use", whose answer is that
        refusal). Another parcel's, recorded meanwhile, is not this one's: a refusal of parcel B right after
        one of parcel A is recorded.

        Judged in the write's decision, on the history read with the order after the version the
        write is conditional on: a newer version makes that write stale, and it is decided again
        on the newer history. So of two reports of the parcel refused at once, the one whose write
        lands second finds the first's entry and records, counts and logs nothing."""
        at = self._clock()

        def decide(current: Order):
            found = self._orders.history(order_id, consistent=True)
            for entry in reversed(answers_known(found[1] if found is not None else [])):
                if entry.type in _REFUSAL_ENTRIES and (entry.detail or {}).get("shipment_id") == shipment_id:
                    if entry.type is OrderEvent.DELIVERY_NOT_RECORDED:
                        return None
                    break
            return current.note_delivery_not_recorded(shipment_id, message, at=at, actor=actor)

        written: list[Order] = []
        modify(self._orders, order_id, decide, written=written)
        if not written:
            return
        logger.error(
            "order %s: shipment %s reported delivered was not shipped, its capture not made: %s; left to a person",
            order_id, shipment_id, message,
            extra={"order_id": order_id, "shipment_id": shipment_id},
        )  # fmt: skip

    def _released_by_report(self, order_id: str, shipment_id: str) -> bool:
        """Whether the order's last release is a delivery report's of `shipment_id` made before
        reports were marked (Order.reported_delivered), whose ship has not been recorded yet (the
        function that released it died first): a report sent again ships it."""
        found = self._orders.history(order_id, consistent=True)
        if found is None or found[0].shipment(shipment_id).status is not ShipmentStatus.PENDING:
            return False
        last = next((e for e in reversed(found[1]) if e.type in (OrderEvent.RELEASED, OrderEvent.ON_HOLD)), None)
        return (
            last is not None
            and last.type is OrderEvent.RELEASED
            and (last.detail or {}).get("note") == reported_delivered_note(shipment_id)
            and found[0].status in (S.ALLOCATED, S.PARTIALLY_SHIPPED)
        )

    # --- Store and warehouse execution ------------------------------------------------------------
    def reject(
        self, order_id: str, shipment_id: str, reason: str, actor: str, channel: str | None = None, *,
        counted_sku: str | None = None,
    ) -> Order:  # fmt: skip
        """The location cannot fulfil a pending shipment. Recorded first (the order goes back to
        `authorized` to be sourced again, a held one when it is released, that location excluded
        for it), then the units reserved there are released: the workflow, started again by the
        status change, never reserves at that location for this order again, so the release cannot
        undo its work. What the order
        holds elsewhere stays reserved for the workflow to keep or release. A repeat of a reject
        recorded already only finishes the release. A shipment an earlier change withdrew (two
        locations of a split order rejecting at once: the first sent the order back to be sourced)
        is rejected all the same: its location is excluded (Order.reject_withdrawn). A reject refused
        (404, 409), or of a parcel no longer on the order, leaves another parcel's ship in flight alone.
        `counted_sku`: a stock take's reject, which counted that sku short there: the location is
        excluded only until that sku is restocked there (Order.count_exclusion_lapsed); a person's
        reject of a shipment such a reject took first makes that exclusion stay (Order.reject_counted_out)."""

        def rejectable(order: Order) -> None:
            if self._rejected_at(order, shipment_id) is not None:
                return
            if any(s.id == shipment_id for s in order.shipments):
                if order.status is S.PARTIALLY_SHIPPED and self._resourcing is not None:
                    order.rejectable_in_part(shipment_id)
                else:
                    order.rejectable(shipment_id)
            else:
                withdrawn_from = self._withdrawn_from(order_id, shipment_id)
                if withdrawn_from is None:
                    order.shipment(shipment_id)  # NotFound
                else:
                    self._check_withdrawn_rejectable(order, shipment_id, withdrawn_from)

        # A capture asked for a parcel of the order (a ship in flight, or one that died) is refunded
        # first, by a reject that goes ahead and sends the order back to be sourced, decided on a
        # consistent read (a plain one may predate the ship that makes it refused): one refused,
        # or one of a parcel no longer on the order (rejected already, or withdrawn), changes no
        # parcel and leaves that ship to record it.
        checked = self._checked(order_id, channel, rejectable)
        if checked.status is S.PARTIALLY_SHIPPED and any(s.id == shipment_id for s in checked.shipments):
            # Only that parcel changes: another's ship in flight is left alone (_reject_in_part).
            return self._reject_in_part(order_id, shipment_id, reason, actor, channel, counted_sku)
        if checked.captures_requested:
            checked = visible(self._orders.get(order_id, consistent=True), order_id, channel)
            rejectable(checked)
            if any(s.id == shipment_id for s in checked.shipments):
                self._cancellation.settle_capture_requests(checked, actor)
        at = self._clock()

        def decide(order: Order):
            rejected_at = self._rejected_at(order, shipment_id)
            if rejected_at is not None:
                # A stock take's reject of it came first: a person's makes the exclusion stay.
                if counted_sku is None:
                    return order.reject_counted_out(shipment_id, rejected_at, reason, at=at, actor=actor)
                return None
            if not any(s.id == shipment_id for s in order.shipments):
                withdrawn_from = self._withdrawn_from(order_id, shipment_id)
                if withdrawn_from is not None:
                    self._check_withdrawn_rejectable(order, shipment_id, withdrawn_from)
                    return order.reject_withdrawn(
                        shipment_id, withdrawn_from, reason, at=at, actor=actor, counted_sku=counted_sku
                    )
            return order.reject_shipment(shipment_id, reason, at=at, actor=actor, counted_sku=counted_sku)

        order = modify(self._orders, order_id, decide, channel=channel)
        location_id = self._rejected_at(order, shipment_id)
        if location_id is not None:
            # Under the keys of the lines edits replaced too: an edit keeps what they hold for the
            # workflow to move (a held order's until its release), which it never moves to an
            # excluded location; nothing of this order is reserved under them again.
            self._release_lines(order, [*order.lines, *order.replaced_lines], [location_id])
        if any(s.status in (ShipmentStatus.SHIPPED, ShipmentStatus.DELIVERED) for s in order.shipments):
            # A reject of a partly shipped order's parcel sent again: it finishes what it left.
            return self._units.settle_after_reject(order, actor)
        return self._units.cancel_given_up(order, actor)  # the bookings of the parcels it withdrew

    def _reject_in_part(
        self, order_id: str, shipment_id: str, reason: str, actor: str, channel: str | None, counted_sku: str | None
    ) -> Order:  # fmt: skip
        """The reject of a pending parcel of a partly shipped order. Its units are sourced again
        first, at locations that have no parcel of the order, reserved and booked
        (Workflow.source_parcel_again), and what none has is priced out as a cancel of units
        (UnitCancellation.out_of_stock); then one write conditional on the order's status and
        version records it all (Order.reject_in_part: the parcel replaced by the new ones, its
        location excluded, the units none has cancelled out_of_stock, the order partially_shipped
        still, or shipped when nothing is left to go), and after it the rejected parcel's units are
        released, its booking cancelled and the payment settled to the new total
        (UnitCancellation.settle_after_reject). A write lost to another change gives back what this
        attempt reserved and decides again on the order as it is. A request that dies before the
        write leaves reservations and a booking no version records: the reject sent again counts
        them as its own and gets the same booking (the same version, the same key); after the
        write, the reject sent again (or the reconciler's kept-back pass, for what the write
        recorded owed) finishes the rest."""
        assert self._resourcing is not None
        made: list[GivenUpBooking] = []
        try:
            for _ in range(ATTEMPTS):
                order = visible(self._orders.get(order_id, consistent=True), order_id, channel)
                if self._rejected_at(order, shipment_id) is not None:
                    break  # a twin of this reject wrote it meanwhile
                order.rejectable_in_part(shipment_id)
                if order.capture_request(shipment_id) is not None:
                    # A ship of it asked for its capture (in flight, or it died): refunded first, as
                    # a reject of an allocated order refunds it, then decided again on the order as
                    # that leaves it. Another parcel's is left to its ship: this changes no other.
                    self._cancellation.settle_capture_requests(order, actor, shipment_id=shipment_id)
                    continue
                sourced = self._resourcing.source_parcel_again(order, shipment_id)
                made.extend(sourced.bookings)
                at = self._clock()
                try:
                    cancelled = (
                        self._units.out_of_stock(order, shipment_id, sourced.short, at=at, actor=actor)
                        if sourced.short else None
                    )  # fmt: skip
                    new, entries = order.reject_in_part(
                        shipment_id, reason, shipments=sourced.shipments, allocations=sourced.allocations,
                        cancelled=cancelled, at=at, actor=actor, maybe_booked=sourced.maybe_booked,
                        counted_sku=counted_sku, sourcing_rules_version=sourced.sourcing_rules_version,
                    )  # fmt: skip
                    self._orders.update(self._units.owing_after_reject(new), order, entries)
                except StaleVersion:
                    self._resourcing.release_unrecorded_parcels(order_id, sourced.reserved)
                    continue
                except Exception:
                    self._resourcing.release_unrecorded_parcels(order_id, sourced.reserved)
                    raise
                break
            else:
                raise StaleVersion(f"order {order_id} kept changing; retry")
        finally:
            if made:
                # Those no version uses (an attempt that lost its write) are owed a cancel.
                give_up_unrecorded(self._orders, order_id, made, self._clock)
        return self._units.settle_after_reject(visible(self._orders.get(order_id, consistent=True), order_id, channel),
                                               actor)  # fmt: skip

    def source_backorder_again(
        self, order_id: str, location_id: str, reason: str, actor: str, *, counted_sku: str | None = None
    ) -> Order:  # fmt: skip
        """A stock take at `location_id` no longer covers what the backordered order holds there:
        recorded first (Order.source_again_without: authorized, that location excluded; an order
        sent back to be sourced since the count read it too), then its units there are released,
        as a reject releases them, under every key it holds units by (those of lines an edit
        replaced too: its ReserveStock has not moved them yet). A repeat finishes the release.
        `counted_sku`: the sku the count counted short, whose restocking there lifts the exclusion."""
        at = self._clock()

        def decide(order: Order):
            if location_id in order.excluded_locations and all(a.location_id != location_id for a in order.allocations):
                return None  # sent back already: only the release is finished
            return order.source_again_without(location_id, reason, at=at, actor=actor, counted_sku=counted_sku)

        order = modify(self._orders, order_id, decide)
        self._release_lines(order, [*order.lines, *order.replaced_lines], [location_id])
        return order

    def _withdrawn_from(self, order_id: str, shipment_id: str) -> str | None:
        """The location of `shipment_id` if the order had it and a change withdrew it: a reject's or
        an edit's history entry names the allocations it released (_released), and a shipment's id
        derives from its order, location and generation (Order.location_of_parcel). None for a
        shipment the order never had."""
        found = self._orders.history(order_id)
        if found is None:
            return None
        order, history = found
        for entry in history:
            location_id = order.location_of_parcel(shipment_id, _released(entry))
            if location_id is not None:
                return location_id
        return None

    def _check_withdrawn_rejectable(self, order: Order, shipment_id: str, location_id: str) -> None:
        """A late reject of `shipment_id`, which a change withdrew from `order`, is refused while its
        location holds a parcel of the order sourced there since (Order.check_nothing_held_at): as a
        late ship of it is, 409 naming what withdrew it (_withdrawal), so the warehouse acts on the
        parcel it holds, which excluding the location would move away unrejected. The history is
        read only on the refusal."""
        try:
            order.check_nothing_held_at(location_id, shipment_id)
        except InvalidTransition:
            found = self._orders.history(order.id, consistent=True)
            refusal = _withdrawal(found[0], found[1], shipment_id) if found is not None else None
            if refusal is None:
                raise
            raise refusal from None

    @staticmethod
    def _rejected_at(order: Order, shipment_id: str) -> str | None:
        """The location that rejected `shipment_id` (a shipment's id derives from its order,
        location and generation: Order.location_of_parcel); None while it has not."""
        if any(s.id == shipment_id for s in order.shipments):
            return None
        return order.location_of_parcel(shipment_id, order.excluded_locations)

    def ready(self, order_id: str, shipment_id: str, actor: str, channel: str | None = None) -> Order:
        """The store has picked a pickup: it waits `ready_for_pickup` until collected or expired
        (its `collect_by`; none without a pickup expiry, and then nothing expires it). A pickup
        readied already, or collected since (it was readied: a store's wave sent again, as a ship
        repeated after the delivery), is answered as it stands and changes nothing. A pickup a
        change withdrew from the order is refused as a ship of a parcel is (_refused_if_withdrawn)."""
        at = self._clock()
        collect_by = at + self._pickup_expiry if self._pickup_expiry is not None else None
        done = (ShipmentStatus.READY_FOR_PICKUP, ShipmentStatus.DELIVERED)

        def decide(order: Order):
            if order.fulfillment.type == "pickup" and order.shipment(shipment_id).status in done:
                return None
            return order.ready_for_pickup(shipment_id, collect_by=collect_by, at=at, actor=actor)

        with self._refused_if_withdrawn(order_id, shipment_id, channel):
            return modify(self._orders, order_id, decide, channel=channel)

    def collect(self, order_id: str, shipment_id: str, actor: str, channel: str | None = None) -> Order:
        """The customer collected a pickup: its share of the payment is requested and captured
        first (as a ship captures), then the shipment is recorded delivered, then its units leave
        on_hand, and (as after a ship) the payment of an order that lost units is settled to its
        total. Collecting a collected pickup again finishes those last two (its request may have
        died after the write) and changes nothing else."""
        done = (ShipmentStatus.DELIVERED,)

        def record(current: Order, amount: Money, reference: str | None, at: datetime):
            return current.collect(shipment_id, captured=amount, capture_reference=reference, at=at, actor=actor)

        def collectable(current: Order) -> None:
            if current.shipment(shipment_id).status not in done:
                current.ready_to_collect(shipment_id)

        order = self._checked(order_id, channel, collectable)
        return self._hand_over(order, shipment_id, actor, channel, done, record)

    def expire_pickup(self, order_id: str, shipment_id: str, actor: str) -> Order:
        """An uncollected pickup past its `collect_by`: the shipment and the order are cancelled
        (`pickup_expired`), then its units are released (they never left on_hand) and the
        authorization voided, as a cancel does. Nothing to do once it was collected or cancelled."""
        at = self._clock()

        def decide(order: Order):
            if order.shipment(shipment_id).status is not ShipmentStatus.READY_FOR_PICKUP:
                return None
            return order.expire_pickup(shipment_id, at=at, actor=actor)

        order = modify(self._orders, order_id, decide)
        if order.status is not S.CANCELLED:
            return order
        return self._units.cancel_given_up(
            self._cancellation.cancel(order_id, "pickup_expired", actor, closed_ok=True), actor
        )

    # --- Cancel -------------------------------------------------------------------------------
    def cancel(self, order_id: str, reason: str, actor: str, channel: str | None = None,
               lines: dict[str, int] | None = None, request_key: str | None = None,
               confirms_parcels: bool = True, expected_version: int | None = None) -> Order:  # fmt: skip
        """Before anything shipped and without `lines`: the order, cancelled, even when its
        authorization could not be voided (the payment then stays `authorized` and the history
        says why; cancelling again retries the void). On a partly shipped order, or with `lines`
        ({line_id: units}): those units, or every unit not shipped, cancelled (UnitCancellation;
        `request_key` names a client's request, so its retry cancels no units twice; not
        `confirms_parcels`: the caller may not release a hold, UnitCancellation.cancel; with
        `expected_version`, the caller's If-Match, an order at another version is 409, nothing written)."""
        return self._units.cancel(order_id, reason, actor, lines=lines, channel=channel, request_key=request_key,
                                  confirms_parcels=confirms_parcels, expected_version=expected_version)  # fmt: skip

    def finish_carrier_work(self, order: Order, actor: str, down: set[str] | None = None) -> CarrierWork:
        """What the carrier is still owed for the order: its parcels due a label booked again, its
        given-up bookings cancelled but for carriers `down` (the reconciler's pass,
        core.carrier_bookings)."""
        return self._units.finish_carrier_work(order, actor, down)

    def refund_kept_back(self, order: Order, actor: str) -> Order:
        """Refund what the order's returns kept back, as far as its captures make it refundable
        (the reconciler's kept-back pass: UnitCancellation.refund_kept_back), but what the gateway
        refused KEPT_BACK_REFUSALS times already: left to a person, it is not asked again. First,
        what a cancel of units owed back and its function died before giving (Order.settlement_owed:
        UnitCancellation.settle_owed), and the units it freed and died before releasing
        (Order.stock_owed: UnitCancellation.release_owed). PaymentGatewayUnavailable when the
        gateway stays down for that settlement: what returns kept back is not asked then. Before
        all, the parcels carriers reported delivered that the reports' functions died before
        finishing (finish_reported)."""
        if order.reported_to_finish():
            order = self.finish_reported(order, actor)
        if order.stock_owed:
            order = self._units.release_owed(order)
        if order.settlement_owed:
            order = self._pass_units.settle_owed(order, actor)
        return self._units.refund_kept_back(order, actor, refusals=KEPT_BACK_REFUSALS)

    def finish_reported(self, order: Order, actor: str) -> Order:
        """Ship and deliver the parcels a carrier reported delivered whose report's function died
        after marking them (Order.reported_to_finish), as the report sent again would (deliver):
        the ship asks its capture under the request standing (the same key: the gateway answers
        the capture it made, never a second), then the parcel is delivered at the carrier's time
        the mark holds. Idempotent: a pass repeated, or racing the carrier's retry or a person's
        ship, records each once. A refusal of that capture is recorded as the report's would be
        (deliver: `delivery_not_recorded`), then the parcel is given up (Order.give_up_reported:
        still marked, asked no more by the pass; a person's ship or the carrier's next report
        finishes it). PaymentGatewayUnavailable and NoPaymentPlugin are raised (nothing moved:
        the next pass asks again), as anything else that refuses while the parcel is still the
        pass's; one the order, read again, no longer gives the pass (reported_to_finish: finished,
        written off or refused by its carrier's report, or the order held, since the pass read it)
        is not its failure. Returns the order as it then is."""
        for shipment_id in order.reported_to_finish():
            try:
                self.deliver(order.id, shipment_id, actor)
            except NoPaymentPlugin:
                raise
            except PaymentRefused:
                modify(self._orders, order.id, _giving_up(shipment_id, self._clock()))
            except InvalidTransition:
                current = self._orders.get(order.id, consistent=True)
                if current is not None and shipment_id in current.reported_to_finish():
                    raise
        return self._orders.get(order.id, consistent=True) or order

    def release_owed_stock(self, order: Order) -> Order:
        """Only the units a cancel of units freed and its function died before releasing
        (Order.stock_owed: UnitCancellation.release_owed), no gateway asked: what the kept-back
        pass still does for an order whose gateway is down in the pass, the rest it owes left for
        a later pass. Returns the order as it then is."""
        return self._units.release_owed(order)

    # --- Edit ---------------------------------------------------------------------------------
    def edit(self, order_id: str, expected_version: int, edit: OrderEdit, actor: str,
             channel: str | None = None) -> Order:  # fmt: skip
        """Change lines, address or shipping method until the first shipment ships; totals are
        priced again exactly as at capture. An order whose total grows is authorized again for
        the new total before the edit is stored (the old authorization, which the edit's write
        names as replaced, voided after it: Cancellation.void_replaced_authorizations),
        and the order records that it asks for it first (Order.request_reauthorization), so an
        authorization the gateway makes is never left behind: the edit repeated with the same
        If-Match after it died records it (under the same key, for the same total), and anything
        else that finds it (another edit, a cancel, the last parcel's ship) voids it first
        (Cancellation.void_requested_authorization).
        An allocated or backordered order goes back to `authorized` to be sourced again: the
        outbox restarts its workflow on that change (not a pickup order whose lines the edit leaves
        as they are: Order.sources_again_after). An edited order the review rules ask to
        review (what they did not ask for the order as it was) is stored on hold in the same
        write, as a new order is."""
        # Read consistently: If-Match is judged on this read, and the caller may hold the version a
        # change has just answered, which an eventually consistent read may not show yet.
        found = self._orders.get_with_token(order_id, consistent=True)
        visible(found[0] if found else None, order_id, channel)
        order, token = found
        if not order.edits_from(expected_version):
            raise StaleVersion.unseen(f"order {order_id}", order.version, expected_version)
        order.check_editable()
        # Without new lines the order's own are priced again; a line whose every unit was cancelled
        # has none to price and stays as it is.
        kept = [line for line in order.lines if line.quantity]
        # Lines named as the order has them, in whatever order, are its own: priced in its order.
        own = [LineInput(sku=line.sku, quantity=line.quantity) for line in kept]
        lines = own if edit.lines is None or _same_lines(edit, kept) else edit.lines
        shipping_method = edit.shipping_method or (order.shipping_method if order.fulfillment.type == "ship" else None)
        try:
            cmd = PlaceOrder(
                channel=order.channel, external_id=order.external_id, currency=order.currency,
                customer=order.customer, lines=lines,
                shipping_address=edit.shipping_address or order.shipping_address,
                fulfillment=order.fulfillment, shipping_method=shipping_method,
                promo_codes=order.promo_codes, payment=PaymentInput(method=order.payment.method, token=token or "none"),
            )  # fmt: skip
        except ValidationError as error:
            raise refused_as_kept(error) from None  # what the edit keeps (address, customer), as a new order's
        # What it names as the order has it already is no change: an edit that changes nothing is
        # the order as it is (no write, no event, an allocated order not sourced and booked again);
        # one that changes something re-sources as any edit does, naming only what it changed.
        edit = _unchanged_left_out(order, edit, kept, cmd.shipping_address)
        if (edit.lines, edit.shipping_address, edit.shipping_method) == (None, None, None) and (
            order.version == expected_version and order.authorization_requested is None
        ):
            return order
        # Before anything is written or asked of the gateway (a standing request voided included).
        if edit.lines is not None:
            order.check_room_to_replace_lines()
        changes = sorted(name for name in ("lines", "shipping_address", "shipping_method")
                         if getattr(edit, name) is not None)  # fmt: skip
        order.check_room_to_give_up_bookings(changes)
        # Checked against the stock sourcing may use again: the order's own units count, a
        # location that rejected a shipment of it does not. Read whatever its status: an order
        # sent back to be sourced (an earlier edit, a reject) holds its units until its workflow
        # runs again, which a hold puts off.
        held = self._held_by(order)
        # New lines replace the order's whole, under ids after every one it has had: a client that
        # read the order before the edit and names one of its lines (a cancel, a return) is refused
        # rather than served with other goods. Lines named as they are keep theirs (no change).
        priced = self._capture.quote(
            cmd, held=held, excluded=order.excluded_locations, placed_with=order.placed_promotions(), of=order,
            first_line=order.next_line_number() if edit.lines else 1,
        )  # fmt: skip
        total = order.payable(priced.totals)
        # Whatever the order's status (authorized, allocated, backordered, or held from one of them),
        # an authorization that no longer covers the total (or that a renewal standing will cover
        # for less: Order.authorization_covers) is replaced before the edit is stored.
        authorized = order.payment.status is PaymentStatus.AUTHORIZED
        grows = authorized and total.amount > order.authorization_covers().amount
        if grows:
            self._capture.check_payment_method(cmd)  # more money on a method the shop no longer takes: 422
            order.check_room_to_reauthorize()
        request = order.authorization_requested
        own = request is not None and not request.withdrawn and order.version == request.edit_of + 1
        if own and grows and request.amount == total and self._declined(order, request):
            # The gateway answers its key with that decline for good (hookspecs): asked again, as
            # the customer whose bank lifted a block asks, it is a new authorization, under the key
            # of a request of its own, once this one is settled.
            own = False
        if request is not None and not (own and grows and request.amount == total):
            # Another edit's, or this one's for another total: voided, then this edit made on the
            # order as that leaves it, unless anything else changed it meanwhile.
            settled = self._cancellation.void_requested_authorization(order, actor)
            if settled.version > order.version + (1 if request.withdrawn else 2):
                raise StaleVersion(f"order {order_id} changed meanwhile; read it again")
            return self.edit(order_id, settled.version, edit, actor, channel)
        at = self._clock()

        def edited(edited_order: Order, reauthorized: PaymentResult | None) -> Change:
            return edited_order.edit(
                lines=priced.lines if edit.lines else _priced_in_place(order.lines, kept, priced.lines),
                totals=priced.totals, shipping_address=cmd.shipping_address,
                shipping_method=priced.shipping_method, changed=changes,
                reauthorized=(total, reauthorized.reference) if reauthorized else None, at=at, actor=actor,
                grants=priced.grants,
            )  # fmt: skip

        # Reviewed again as at capture, so an order edited up past a review threshold is not sourced
        # and shipped unseen; asked only for what the order as it was did not need (a released
        # order whose address changes is not held again, one whose total grows is). Asked before
        # the gateway, so a rule that fails leaves no authorization behind. The preview leaves out
        # this edit's own authorization request (standing when the edit is repeated): it is never
        # stored. A held order is asked too, as it will be released (Order.as_released): a person's
        # hold for something else (an address) would otherwise let its release send the grown
        # order on unreviewed.
        # An edit that lowers the total asks nothing for a reason the order as it was was asked for
        # already: a rule whose note names the amount it judged (the built-in threshold's) would
        # otherwise ask again, for less money than a reviewer released (or nobody had to), and hold it.
        preview, _ = edited(order.model_copy(update={"authorization_requested": None}), None)
        judged = preview.as_released()
        asked = self._capture.reviews(judged)
        if asked:
            before = self._capture.reviews(order.as_released())
            lowered = judged.totals.grand_total.amount < order.totals.grand_total.amount
            reasons = {request.reason for request in before} if lowered else set()
            asked = [request for request in asked if request not in before and request.reason not in reasons]
        reauthorized = None
        if grows:
            order, reauthorized = self._reauthorize(order, token, total, actor)
        new, entry = edited(order, reauthorized)
        entries = [entry]
        if asked:
            new, entries = order.held_for_review((new, entry), asked, at=at, actor=REVIEW_ACTOR)
        try:
            self._orders.update(new, order, entries)
        except StaleVersion:
            # Voided only when no version records it: the same edit repeated at once reauthorizes
            # under the same key (the version it writes), so the gateway gave both one authorization.
            # Read consistently: no write guards this decision.
            if reauthorized is not None:
                self._give_back(order, reauthorized.reference, actor)
            raise StaleVersion(f"order {order_id} changed meanwhile; read it again") from None
        if held:
            # The edit is written and stands whatever the inventory answers: what this could not
            # give back, the order's sourcing or its cancel does (core.holds.give_back_or_note).
            give_back_or_note(
                self._orders, new, lambda: self._release_replaced_lines(order, new), at=self._clock(), actor=actor
            )
        if new.payment.status is PaymentStatus.PENDING:
            # Its next authorization is asked under the edited version's key: one an earlier attempt
            # may have obtained (its answer lost) would never be used. A failure is in the history;
            # a cancel of the order asks again.
            with contextlib.suppress(*NOT_MADE):
                left = own_authorization_keys(order)
                self._cancellation.release_lost_authorizations(new, actor, unrecorded=left)
        new = self._units.cancel_given_up(new, actor)  # the bookings of the parcels it withdrew
        if not new.replaced_authorizations:
            return new
        # A void that cannot be made now leaves the replaced authorization on the order (each
        # attempt in the history), for the next edit, a cancel or the last parcel's ship to void,
        # or the reconciler once nothing changes the order (core.authorization_sweep).
        with contextlib.suppress(*NOT_MADE):
            return self._cancellation.void_replaced_authorizations(new, actor)
        return self._orders.get(order_id, consistent=True) or new

    def _held_by(self, order: Order) -> dict[tuple[str, str], int]:
        """The units `order` holds, by sku and location (under the lines edits replaced too: a line
        edited back to a sku its units were not released from yet has them still)."""
        locations = holding_locations(order, self._catalog.list_locations())
        keys: dict[tuple[str, str], list[str]] = defaultdict(list)
        for line_id, sku in order.reservation_lines():
            for location_id in locations:
                keys[(sku, location_id)].append(reservation_key(order.id, line_id))
        held: dict[tuple[str, str], int] = defaultdict(int)
        for (sku, location_id, _), quantity in self._inventory.reservations(dict(keys)).items():
            held[(sku, location_id)] += quantity
        return dict(held)

    def _release_replaced_lines(self, old: Order, new: Order) -> None:
        """After an order holding stock was edited (allocated, backordered, or sent back to be
        sourced and not sourced yet): release what the lines edits replaced hold (the new order's
        `replaced_lines`: its old lines whose id and sku it no longer has, and those an earlier edit
        could not release) of a sku it no longer has. The rest stays reserved for the workflow, which
        sources the order again counting its own reservations (those of its replaced lines too) as
        available and releases what its new plan does not keep: a line that only changed its id (a
        line before it dropped) keeps its units, which released here another order could take
        before the workflow runs. Releasing those here instead could also free a
        reservation the restarted workflow has just made under the same key. A held order's workflow
        runs only once it is released: until then what it holds of each sku beyond what its lines
        now want is given back too (core.holds.give_back_surplus), or an order edited down would
        keep those units from other orders for as long as the hold lasts."""
        locations = holding_locations(old, self._catalog.list_locations())
        keys: dict[tuple[str, str], list[str]] = defaultdict(list)
        skus = {line.sku for line in new.lines if line.quantity}
        for line in (line for line in new.replaced_lines if line.sku not in skus):
            for location_id in locations:
                keys[(line.sku, location_id)].append(reservation_key(new.id, line.line_id))
        if keys:
            for item in self._inventory.reservations(dict(keys)):
                self._inventory.release(*item)
        if new.status is S.ON_HOLD:
            give_back_surplus(self._inventory, new, locations)

    def _release_lines(self, order: Order, lines: Sequence[OrderLine | ReplacedLine], location_ids: list[str]) -> None:
        keys: dict[tuple[str, str], list[str]] = defaultdict(list)
        for line in lines:
            for location_id in location_ids:
                keys[(line.sku, location_id)].append(reservation_key(order.id, line.line_id))
        if keys:
            for item in self._inventory.reservations(dict(keys)):
                self._inventory.release(*item)

    def _reauthorize(self, order: Order, token: str, amount: Money, actor: str) -> tuple[Order, PaymentResult]:
        """The order with the authorization of `amount` requested (Order.request_reauthorization, or
        this edit's own request, left standing by an earlier try), and the gateway's authorization.
        Within the request: transient failures are retried; still failing, 503 with Retry-After
        (the request stands: it may have been made). Keyed by the version the edit will write, so
        repeating the edit reuses the authorization; a decline (409) leaves the request standing
        too, for the next change to settle (asked again under its key, it is declined again: the
        edit sent again for the same total settles it and asks under a new key, _declined)."""
        if order.authorization_requested is None:
            new, _ = order.request_reauthorization(amount, at=self._clock())
            try:
                self._orders.update(new, order, [])
            except StaleVersion:
                raise StaleVersion(f"order {order.id} changed meanwhile; read it again") from None
            order = new
        request = order.authorization_requested
        assert request is not None
        key = payment_keys.authorize(order.id, request.authorizes_version)
        try:
            return order, self._payments.retried(
                "authorize",
                lambda attempt: self._payments.authorize(order.payment.method, token, amount, order.id, attempt, key),
                self._recorder(order.id, actor, amount=amount.model_dump(mode="json"), authorization_key=key),
            )
        except PaymentDeclined as declined:
            raise Conflict(
                f"the payment was declined for the new total: {declined.message}", code="payment_declined"
            ) from None

    def _declined(self, order: Order, request: AuthorizationRequest) -> bool:
        """Whether the gateway declined the authorization `request` (order's, standing) asks for
        under its key: its history names the key refused (_reauthorize records it)."""
        found = self._orders.history(order.id, consistent=True)
        key = payment_keys.authorize(order.id, request.authorizes_version)
        return found is not None and key in refused_keys(found[1], "authorize")

    def _give_back(self, order: Order, reference: str, actor: str) -> None:
        """The edit of `order` lost its write after the gateway authorized `reference`: voided
        unless a version records it (the same edit repeated at once, under the same key), with its
        request (Cancellation.void_requested_authorization) when that still stands; otherwise by
        itself, under its key (Cancellation.void_unrecorded: kept for a cancel or the reconciler
        when the gateway is down)."""
        current = self._orders.get(order.id, consistent=True)
        if current is not None and current.payment.authorization == reference:
            return
        standing = current.authorization_requested if current is not None else None
        asked = order.authorization_requested
        if standing is not None and asked is not None and standing.edit_of == asked.edit_of:
            with contextlib.suppress(*NOT_MADE):
                self._cancellation.void_requested_authorization(current, actor)
        else:
            key = payment_keys.authorize(order.id, asked.authorizes_version) if asked is not None else None
            self._cancellation.void_unrecorded(order, reference, actor, key=key)


def _same_lines(edit: OrderEdit, kept: list[OrderLine]) -> bool:
    """Whether `edit` names lines, and they are the order's lines with units (`kept`): the same skus
    and quantities, each as often, in any order (the array's order is no part of what was bought)."""
    return edit.lines is not None and Counter((x.sku, x.quantity) for x in edit.lines) == Counter(
        (x.sku, x.quantity) for x in kept
    )


def _unchanged_left_out(order: Order, edit: OrderEdit, kept: list[OrderLine], address: Address) -> OrderEdit:
    """`edit` without the parts that name what `order` has already: the lines with units (`kept`,
    _same_lines); the address (`address`, as the edit's is stored); the shipping method."""
    same: dict[str, None] = {}
    if _same_lines(edit, kept):
        same["lines"] = None
    if edit.shipping_address is not None and address.model_dump() == order.shipping_address.model_dump():
        same["shipping_address"] = None
    if edit.shipping_method is not None and edit.shipping_method == order.shipping_method:
        same["shipping_method"] = None
    return edit.model_copy(update=same) if same else edit


def _priced_in_place(lines: list[OrderLine], kept: list[OrderLine], priced: list[OrderLine]) -> list[OrderLine]:
    """`lines` with each of `kept` (those with units) replaced by its new price, under its own
    line id and with the units cancelled from it: an edit that names no lines keeps them."""
    by_id = {line.line_id: price for line, price in zip(kept, priced, strict=True)}
    return [
        OrderLine.model_validate({**dict(by_id[line.line_id]), "line_id": line.line_id,
                                  "cancelled_quantity": line.cancelled_quantity})
        if line.line_id in by_id else line
        for line in lines
    ]  # fmt: skip


def _still_there(order: Order, shipment_id: str) -> None:
    """A shipment withdrawn while it was being captured for (its order edited, or the shipment
    rejected, and sent back to be sourced) is a conflict: the caller refunds the capture."""
    if not any(s.id == shipment_id for s in order.shipments):
        raise InvalidTransition(f"shipment {shipment_id} was withdrawn: its order is being sourced again")


# What an order's change that withdrew its parcels did, as a refused confirmation of one says it.
_WITHDRAWN_BY = {
    OrderEvent.EDITED: "the order was edited",
    OrderEvent.UNITS_CANCELLED: "units of the order were cancelled",
    OrderEvent.SOURCED_AGAIN: "units it recorded as reserved were no longer held for it",
}


def _released(entry: HistoryEntry) -> list[str]:
    """The locations whose allocations `entry` released, sending the order back to be sourced: a
    reject's, an edit's or a cancel of units' `released`, a sourcing again's `allocations`."""
    detail = entry.detail or {}
    released = detail.get("allocations" if entry.type is OrderEvent.SOURCED_AGAIN else "released") or []
    return [r.get("location_id") for r in released if isinstance(r, dict)]


def _rejected_because(reason: object) -> str:
    if reason == STOCK_COUNT_REASON:
        return "a stock take at its location counted fewer units than it held"
    return f"its location rejected it, reason: {reason}"


def _made(entry: HistoryEntry, shipment_id: str) -> bool:
    """Whether `entry` made the parcel `shipment_id` (an allocation's, or a partly shipped order's
    reject's parcels sourced again: each names the parcels it made)."""
    made = (entry.detail or {}).get("shipments") or []
    return any((parcel.get("id") if isinstance(parcel, dict) else parcel) == shipment_id for parcel in made)


def _withdrawal(order: Order, history: list[HistoryEntry], shipment_id: str) -> ParcelWithdrawn | None:
    """The refusal of a confirmation of `shipment_id`, which `order` no longer has, by the entry of
    its `history` that withdrew it (a reject names its parcel and the allocations it released, an
    edit or a cancel of units that sent the order back to be sourced the allocations): the first
    after the one that made it, so a parcel replaced at its location (Order.parcel_id) names its own
    withdrawal, not its replacement's; the last one otherwise (a history that does not say which
    made it). None when no entry did (the order never had it). A shipment's id derives from its
    order, location and generation (Order.location_of_parcel)."""
    made = max((n for n, entry in enumerate(history) if _made(entry, shipment_id)), default=None)
    for entry in history[made + 1 :] if made is not None else reversed(history):
        detail = entry.detail or {}
        location_id = order.location_of_parcel(shipment_id, _released(entry))
        rejected = entry.type is OrderEvent.SHIPMENT_REJECTED and detail.get("shipment_id") == shipment_id
        if rejected:
            location_id = detail.get("location_id") or location_id
            why = _rejected_because(detail.get("reason"))
        elif location_id is None:
            continue
        elif entry.type is OrderEvent.SHIPMENT_REJECTED:
            why = f"another parcel of the order, {detail.get('shipment_id')}, was rejected: "
            why += _rejected_because(detail.get("reason"))
        else:
            why = _WITHDRAWN_BY.get(entry.type, f"the order's change {entry.type.value}")
        return ParcelWithdrawn(
            f"shipment {shipment_id} was withdrawn ({why}): its order went back to be sourced; if the parcel "
            "left all the same, a person is to settle it",
            details=[{"shipment_id": shipment_id, "location_id": location_id, "withdrawn_by": entry.type.value}],
        )
    return None


# The entries of a parcel's refused capture, and of a delivery report it stopped (_delivery_not_recorded).
_REFUSAL_ENTRIES = frozenset(
    {OrderEvent.PAYMENT_CAPTURE_FAILED, OrderEvent.CAPTURE_NOT_MADE, OrderEvent.DELIVERY_NOT_RECORDED}
)


def _giving_up(shipment_id: str, at: datetime) -> Callable[[Order], Any]:
    """The decision of OrderActions.finish_reported's write once a capture was refused: the parcel
    given up, unless it was finished (or written off, or given up) meanwhile (a carrier's retry, a
    person's ship or cancel), or a capture asked for it stands again (a person's ship in flight).
    Not judged on reported_to_finish: the refusal marked it `refused` (deliver) already."""

    def decide(current: Order):
        mark = current.reported(shipment_id)
        if (
            mark is None or mark.given_up or shipment_id not in current.parcels_reported()
            or shipment_id in current.unfinished_ships()
        ):  # fmt: skip
            return None
        return current.give_up_reported(shipment_id, at=at)

    return decide


def reported_at(order: Order, given: datetime | None, now: datetime) -> datetime:
    """When a carrier's report says a parcel of `order` arrived: `given` (its tracking's `at`) when
    it is believable, not before the order was placed; `now`, when the OMS heard, otherwise. A time
    yet to come, a minute or a year ahead, is taken for now: nothing arrived after the OMS heard
    it had (as Order.deliver takes it)."""
    if given is None or given < order.created_at:
        return now
    return min(given, now)
