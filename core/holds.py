"""Holds for review: a person puts an order that has not shipped on hold, and releases it."""

import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime

from core.cancellation import holding_locations
from core.errors import Conflict, InvalidTransition, StaleVersion
from core.events import OrderEvent
from core.ids import reservation_key
from core.models import RELEASE_RETRY_WINDOW, HoldReason, Note, Order, Strict, utc_now
from core.order_changes import modify, visible
from core.ports import CatalogRepository, InventoryRepository, OrderRepository
from core.status import OrderStatus

logger = logging.getLogger(__name__)


class HoldRequest(Strict):
    """The body of POST /orders/{id}/hold."""

    reason: HoldReason
    note: Note | None = None


class ReleaseRequest(Strict):
    """The body of POST /orders/{id}/release."""

    note: Note | None = None


class Holds:
    """Each is one conditional write (core.order_changes.modify): a hold that races a workflow
    step wins or loses whole, and the step that lost re-reads, finds the hold and stops. The
    workflow of a released `pending`, `authorized` or `backordered` order is started again by the
    outbox (the Orders stream sees the order leave `on_hold`); no execution waits meanwhile.
    `inventory` and `catalog`: where a held order's stock is given back (None, in tests of the
    status alone: nothing is)."""

    def __init__(
        self,
        orders: OrderRepository,
        clock: Callable[[], datetime] = utc_now,
        *,
        inventory: InventoryRepository | None = None,
        catalog: CatalogRepository | None = None,
    ):
        self._orders = orders
        self._clock = clock
        self._inventory = inventory
        self._catalog = catalog

    def hold(
        self, order_id: str, request: HoldRequest, actor: str, channel: str | None = None,
        request_key: str | None = None, expected_version: int | None = None,
    ) -> Order:  # fmt: skip
        """On hold from `pending`, `authorized`, `backordered` or `allocated` (InvalidTransition, 409,
        otherwise: held already, shipped, closed). With `expected_version` (the version the person
        holding it read, their If-Match), an order at another is 409 `version_conflict`, judged in
        the hold's conditional write (Order.check_seen): nothing written. `request_key` (a client's
        Idempotency-Key, scoped to its API key) is kept in the hold's entry, as a release's is: a
        retry under it of a hold that took effect (whose answer was lost) answers the order as it
        stands, whether still held or released since, and whatever version it names, instead of 409
        `on hold already` or a second hold; under it with another reason or note, 409
        `idempotency_key_reused`. An order sent back to be sourced (an edit, a
        reject) and not sourced yet holds what it held before: what its lines hold beyond their
        quantities, and what lines an edit replaced and could not release hold, is given back
        (give_back_surplus), as its workflow, which the hold puts off until
        the release, would have, or an order edited down would keep those units from other orders
        for as long as the hold lasts. A give-back that fails leaves the hold standing
        (give_back_or_note). A workflow step sourcing it meanwhile loses its write to the
        hold and releases what it reserved."""
        at = self._clock()
        keyed = {"request_key": request_key} if request_key is not None else None

        def decide(order: Order):
            order.check_seen(expected_version)
            return order.hold_for(request.reason, request.note, at=at, actor=actor, detail=keyed)

        try:
            held = modify(self._orders, order_id, decide, channel=channel)
        except (InvalidTransition, StaleVersion):
            made = {"reason": request.reason, "note": request.note}
            if request_key is None or not self._made_under(order_id, OrderEvent.ON_HOLD, request_key, made, at):
                raise
            return visible(self._orders.get(order_id, consistent=True), order_id, channel)
        assert held.hold is not None
        if self._inventory is None or self._catalog is None:
            return held
        if held.hold.resume_to is OrderStatus.AUTHORIZED and not held.allocations:
            inventory, catalog = self._inventory, self._catalog
            give_back_or_note(
                self._orders, held,
                lambda: give_back_surplus(inventory, held, holding_locations(held, catalog.list_locations())),
                at=at, actor=actor,
            )  # fmt: skip
        return held

    def release(
        self, order_id: str, request: ReleaseRequest, actor: str, channel: str | None = None,
        request_key: str | None = None, expected_version: int | None = None,
    ) -> Order:  # fmt: skip
        """Back to the status it was held from (InvalidTransition, 409, when it is not on hold).
        `expected_version` (the releasing person's If-Match), as for a hold: an order at another
        version is 409 `version_conflict`, nothing written, before anything else is decided. The
        same release sent again after one that ended a person's hold and left the order held for
        parcels to confirm (Order.repeats_release: a blind retry) changes nothing and answers the
        order as it stands. `request_key` (a client's Idempotency-Key, scoped to its API key) is
        kept in the release's entry: a retry under it of a release that took effect (whose answer
        was lost, and whose hold something else may have ended since: a carrier's delivery report,
        the person's next release) answers the order as it stands instead of 409 `not on hold`;
        under it with another note, 409 `idempotency_key_reused`: whatever version it names."""
        at = self._clock()

        def decide(order: Order):
            order.check_seen(expected_version)
            if order.repeats_release(note=request.note, at=at, actor=actor):
                return None
            return order.release(note=request.note, at=at, actor=actor, request_key=request_key)

        try:
            return modify(self._orders, order_id, decide, channel=channel)
        except (InvalidTransition, StaleVersion):
            made = {"note": request.note}
            if request_key is None or not self._made_under(order_id, OrderEvent.RELEASED, request_key, made, at):
                raise
            return visible(self._orders.get(order_id, consistent=True), order_id, channel)

    def _made_under(
        self, order_id: str, type: OrderEvent, request_key: str, fields: dict[str, str | None], at: datetime
    ) -> bool:
        """Whether an entry of `type` (a hold, a release) under `request_key` within
        RELEASE_RETRY_WINDOW of `at` is in the order's history (Conflict `idempotency_key_reused`
        when its detail had other `fields`: the request's reason, its note)."""
        found = self._orders.history(order_id, consistent=True)
        made = next(
            (entry for entry in reversed(found[1] if found else [])
             if entry.type is type and (entry.detail or {}).get("request_key") == request_key
             and at - entry.at < RELEASE_RETRY_WINDOW),
            None,
        )  # fmt: skip
        if made is None:
            return False
        if any((made.detail or {}).get(name) != (value or None) for name, value in fields.items()):
            raise Conflict(
                "this Idempotency-Key was used with a different request body",
                code="idempotency_key_reused",
                details=[{"field": "Idempotency-Key", "message": "reuse a key only to retry the same request"}],
            )
        return True


def give_back_surplus(inventory: InventoryRepository, order: Order, location_ids: list[str]) -> None:
    """Bring what `order` holds of each sku down to what its lines want of it, and release what
    the lines edits replaced hold beyond that (Order.replaced_lines: the workflow the hold puts
    off would have; a line that only changed its id, a line before it dropped, keeps its units
    under its old key, which the workflow counts as the order's own): its units are kept first at
    the locations that hold the most of them (the fewest parcels), then those first in
    `location_ids`, under its lines' own keys before the replaced ones; the
    order, released, is sourced again around them. Each change is conditional: a shrink on the
    units read (a reservation changed meanwhile is left as it is), a release on the key being
    held, so stock never goes below zero."""
    keys: dict[tuple[str, str], list[str]] = defaultdict(list)
    for line_id, sku in order.reservation_lines():
        for location_id in location_ids:
            keys[(sku, location_id)].append(reservation_key(order.id, line_id))
    wanted: dict[str, int] = defaultdict(int)
    own: set[tuple[str, str]] = set()
    for line in order.lines:
        wanted[line.sku] += line.quantity
        own.add((line.sku, reservation_key(order.id, line.line_id)))
    rank = {location_id: i for i, location_id in enumerate(location_ids)}
    found = inventory.reservations(dict(keys)) if keys else {}
    # An order sent back to be sourced whole holds every unit it wants where its plan takes them
    # (Workflow.source_again_whole, under max_shipments: 1), fewer where it held units before: kept
    # by location id instead, the units its plan took could go to a younger order before its release.
    units_at: dict[str, int] = defaultdict(int)
    for (_, location_id, _), units in found.items():
        units_at[location_id] += units
    first = sorted(found.items(), key=lambda item: (
        -units_at[item[0][1]], rank[item[0][1]], (item[0][0], item[0][2]) not in own))  # fmt: skip
    for (sku, location_id, key), units in first:
        keep = min(units, wanted[sku])
        wanted[sku] -= keep
        if not keep:
            inventory.release(sku, location_id, key)
        elif keep < units:
            inventory.shrink(sku, location_id, key, units, keep)


def give_back_or_note(
    orders: OrderRepository, order: Order, give_back: Callable[[], None], *, at: datetime, actor: str
) -> None:
    """`give_back` the stock `order` no longer needs, after the change that made it so was written
    (a hold, an edit): a failure (the inventory or the catalog unavailable) does not fail the
    change, which stands and is answered (repeated, it would be refused: held already, or a stale
    If-Match). What was not given back stays reserved until the order is sourced again (the
    release, for a held order), which gives back what its plan does not keep and what the lines
    edits replaced hold (Order.replaced_lines), or until its cancel releases all of it. The failure
    is logged and noted in the history (`surplus_not_given_back`, which the business metrics
    count), by its class only: the history is the caller's to read, and an infrastructure error's
    message may name accounts and tables."""
    try:
        give_back()
    except Exception as failure:  # any: the change is written and must stand
        error = type(failure).__name__
        logger.warning(
            "stock an order no longer needs stays reserved until it is sourced again: giving it back failed",
            exc_info=True, extra={"order_id": order.id},
        )  # fmt: skip
        # Noting it may fail as the give-back did: the log line above says it then.
        with contextlib.suppress(Exception):
            modify(
                orders, order.id,
                lambda current: current.noted(OrderEvent.SURPLUS_NOT_GIVEN_BACK, at=at, actor=actor,
                                              detail={"error": error}),
            )  # fmt: skip
