"""Backorder allocation: when units of a sku arrive at a location, fill the orders waiting for them, oldest first.

The Inventory table's stream calls `arrived(sku, location_id)` whenever `available` rises there (an
adjustment, a stock take, a purchase-order receipt, a restocked return, a released reservation).
It reads the sku's backorder queue, never the Orders table, and fills each waiting order through
the workflow's own `fill_backorder` (conditional writes only: it never reserves more than is
available, and a redelivered or concurrent arrival reserves nothing twice). An order whose every
line is then reserved gets its workflow started again, whose CreateShipments allocates it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

from core.actors import BACKORDER_ACTOR
from core.models import AwaitingLine, AwaitingStock, Location, Order
from core.ports import (
    BackorderedOrders,
    Backorders,
    CatalogRepository,
    InventoryRepository,
    OrderRepository,
    SourcingRulesRepository,
    WaitingOrder,
    WorkflowStarter,
)
from core.sourcing import bought_at, lacks_at, stranded, to_source_again
from core.sourcing_rules import SourcingRules
from core.status import OrderStatus
from core.workflow import Workflow, eligible_locations

S = OrderStatus
PAGE = 25
# At most WALK_READS orders read (one consistent GetItem each, some then filled or sourced again) and
# WALK_PAGES pages of the queue by one arrival's walk: the rest is handed on (`arrived`), so a long
# run of orders that take nothing (held, or kept off the location) never runs a stream batch of 25
# records past the function's time limit.
WALK_READS, WALK_PAGES = PAGE, 8
# At most 200 waiting orders read for the demand behind a reorder point, 100 at a time (a BatchGetItem's most).
DEMAND_PAGE, DEMAND_PAGES = 100, 2
# An order in these statuses may still be (or become) backordered: its queue entry stays.
# AUTHORIZED: queued just before it goes backordered (Workflow._wait_for_stock; an arrival's walk stops
# at it), or sent back to be sourced (an edit; its ReserveStock looks at stock itself).
STILL_WAITING = frozenset({S.AUTHORIZED, S.BACKORDERED, S.ON_HOLD})


def bought_for(order: Order) -> bool:
    """Whether the reorder points buy what `order` lacks: written backordered, or held while
    backordered (released, it waits again). Not one sent back to be sourced (by an edit), held or
    not: what it lacks is not known until it is written backordered again."""
    return order.waits_for_stock()


@dataclass
class Demand:
    """What the backordered orders waiting for a sku lack of it (`BackorderAllocator.demand`):
    `waiting`, units by the location whose reorder point buys them; `at`, that location by order;
    `kept`, the safety stock the sourcing rules keep back from orders, by location; `moves`, the
    queue entries this reading placed anew and where (`placed`: those locations), recorded by
    `BackorderAllocator.place` once bought for there (later readings keep an order where it is
    recorded, so this one's record buys for it there)."""

    waiting: Counter[str] = field(default_factory=Counter)
    at: dict[str, str] = field(default_factory=dict)
    kept: Counter[str] = field(default_factory=Counter)
    moves: list[tuple[WaitingOrder, str]] = field(default_factory=list)

    @property
    def placed(self) -> set[str]:
        return {at for _, at in self.moves}


@dataclass
class Arrival:
    """What one arrival did: orders it reserved units for, and those now fully reserved; and what a
    change of the sourcing rules sent back to be sourced (left nowhere to take more units)."""

    filled: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    sourced_again: list[str] = field(default_factory=list)


class BackorderAllocator:
    def __init__(
        self,
        orders: OrderRepository,
        catalog: CatalogRepository,
        queue: Backorders,
        workflow: Workflow,
        starter: WorkflowStarter,
        rules: SourcingRulesRepository | None = None,
        backordered: BackorderedOrders | None = None,
    ):
        self._orders = orders
        self._catalog = catalog
        self._queue = queue
        self._workflow = workflow
        self._starter = starter
        # None: the default rules (version 0) always, as the workflow's fills then use.
        self._rules = rules
        # None: a change of the rules wakes no one.
        self._backordered = backordered

    def arrived(
        self, sku: str, location_id: str, after: WaitingOrder | None = None,
        hand_on: Callable[[WaitingOrder], None] | None = None, *, restocked: bool = False,
    ) -> Arrival:  # fmt: skip
        """Fill the orders waiting for `sku` that may take it from `location_id`, oldest first,
        after `after` (from the oldest when None: a walk handed on goes on where it stopped).
        Stops at the first such order still short of `sku` after its fill that the sourcing rules
        let take units there: the location had no more, so no younger order may get units an older
        one is waiting for. One that `max_shipments` keeps from a new location does not stop them;
        one the rules leave nowhere to take more units is sent back to be sourced (as their wake sends it).
        Reads at most WALK_READS orders and WALK_PAGES pages of the queue: with entries left, it
        stops after the last one it dealt with and hands the walk on from there (`hand_on`, None:
        not), whose every entry before is dealt with (filled, or left as it must wait), so nothing
        is skipped for good and a fill, conditional as ever, reserves nothing twice.
        `restocked`: units of `sku` were added to on_hand there (a receipt, a count raising it, a
        return restocked) since its last stock take, not only freed: an order a stock take's count
        of `sku` there excluded it for is filled there again, the exclusion lifted in its fill's
        write (Workflow.fill_backorder)."""
        result = Arrival()
        locations = None
        rules: SourcingRules | None = None
        reads = pages = 0
        while True:
            if pages == WALK_PAGES:
                return self._handed_on(result, after, hand_on)
            if not (page := self._queue.waiting(sku, after, PAGE)):
                return result
            pages += 1
            locations = locations or self._catalog.list_locations()  # read only when someone waits
            here = next((loc for loc in locations if loc.location_id == location_id), None)
            for entry in page:
                if entry.holds:
                    # Its order held every unit of the sku it wants: a fill gives it none of these.
                    # Only `max_shipments` may have kept it from the location whose arrival now
                    # gives that location its whole order (sent back below); without it, unread.
                    rules = rules or self._current_rules()
                    if rules.max_shipments is None:
                        after = entry
                        continue
                if not entry.may_take_at(here):
                    # Its entry says where it may take units (a ship order, at a location that
                    # ships; a pickup, at its store): passed over unread, as the order would be
                    # below. Read, a long queue of such orders (units counted at a store that ships
                    # nothing) ran the walk past its function's time limit, failing the batch over
                    # and over, and the order that could take the units waited behind them.
                    after = entry
                    continue
                if reads == WALK_READS:
                    return self._handed_on(result, after, hand_on)  # every entry up to `after` dealt with
                reads += 1
                after = entry  # dealt with below, whatever it comes to (or the walk stops here)
                # Read consistently: leaving the queue and skipping an order are decided by no
                # conditional write, and a plain read just after the order went backordered may
                # still show it authorized (skipped: a younger order took its units) or pending
                # (its queue entries removed: no arrival would ever find it again).
                order = self._orders.get(entry.order_id, consistent=True)
                # An entry that `holds` is never marked, so no walk stops at it (WaitingOrder.waits_for):
                # the order's own look sends it back whole where such units give one location its whole order.
                if order is not None and order.status is S.AUTHORIZED and entry.waits_for(order):
                    # Queued by its ReserveStock, its `backordered` write and its own look at stock to
                    # come (Workflow._wait_for_stock). Passed over, the younger orders took the units
                    # it was to find, and nothing walked for it again until the next arrival. The walk
                    # stops at it, kept on its entry, and its step hands the walk on from there once it
                    # has taken what it may (Backorders.recorded). Refused, it was written backordered
                    # since (or left the queue): read again.
                    if not self._may_take(order, location_id, sku if restocked else None, locations):
                        continue
                    if self._queue.stop(sku, entry, location_id, restocked):
                        return result
                    order = self._orders.get(entry.order_id, consistent=True)
                if order is None or order.status not in STILL_WAITING:
                    self._leave(order, entry, sku)  # allocated or cancelled
                    continue
                if order.status is not S.BACKORDERED:
                    continue  # held, or sent back to be sourced (its ReserveStock looks at stock itself)
                if not self._may_take(order, location_id, sku if restocked else None, locations):
                    continue
                short, filled = order.short_of(), False
                if not entry.holds or sku in {line.sku for line in order.lines if line.line_id in short}:
                    # Oldest first in this sku's queue: its units are the order's unless an older one
                    # left them; its other skus may be older orders' that their arrivals have not reached.
                    order, filled = self._fill(
                        order, result, queue=sku, restocked=(sku, location_id) if restocked else None
                    )
                    if order.status is not S.BACKORDERED:
                        continue
                    short = order.short_of()
                if not short:
                    self._complete(order, result, filled)
                    continue
                rules = rules or self._current_rules()
                if stranded(order, locations, rules):
                    # Left nowhere to take more units by a change of the rules whose wake missed it
                    # (sourced under the old ones, it was not backordered yet when the wake read them):
                    # sent back when another location may supply it; with none, it waits (to_source_again).
                    if to_source_again(order, locations, rules):
                        self._source_again(order.id, result)
                    continue
                skus_short = {line.sku for line in order.lines if line.line_id in short}
                if rules.admits(location_id, {a.location_id for a in order.allocations}):
                    if sku not in skus_short:
                        continue  # it waits for other skus, which a fill may take here when they come
                    return result
                # max_shipments keeps it from adding this location beside those it holds units at,
                # and a fill adds nowhere else: one that a plan within the rules now gives every unit
                # it wants is sent back to be sourced, its plan's units reserved for it in that write.
                # So is one waiting for other skus only, which the location had, or holding every
                # unit of this one elsewhere (its entry `holds`): these units may be the last it
                # lacked there. The walk's rules and network decide, as they decided to come here.
                self._source_again_whole(order.id, result, location_id, rules=rules, locations=locations)
            if len(page) < PAGE:
                return result  # the end of the queue

    @staticmethod
    def _may_take(order: Order, location_id: str, restocked: str | None, locations: list[Location]) -> bool:
        """Whether `order` may take units at `location_id`: a location that rejected a shipment of
        it never supplies it, nor one a stock take counted short until restocked (`restocked`: the
        sku restocked there), and one its fulfilment may not use. An order that cannot take these
        units must not stop the younger ones that can."""
        eligible = eligible_locations(order.fulfillment.type, order.fulfillment.location_id, locations)
        return location_id in {loc.location_id for loc in eligible} and not order.excludes(location_id, restocked)

    def _current_rules(self) -> SourcingRules:
        return self._rules.current() if self._rules is not None else SourcingRules()

    @staticmethod
    def _handed_on(
        result: Arrival, after: WaitingOrder | None, hand_on: Callable[[WaitingOrder], None] | None
    ) -> Arrival:
        """The walk stopped at its budget: the rest from after `after` is handed on."""
        if after is not None and hand_on is not None:
            hand_on(after)
        return result

    def rules_changed(self, version: int, after: WaitingOrder | None = None) -> Arrival:
        """A new version of the sourcing rules may give waiting orders units no arrival will bring
        them (a location no longer excluded, less safety stock, a higher `max_shipments`): fill one
        page of the backordered orders, oldest first whatever their skus, after `after` (from the
        oldest when None), as an arrival fills them, and send back to be sourced those the rules
        leave nowhere to take more units (`Workflow.source_again`: their workflow sources them under
        the rules, reusing what they hold where it may still ship). Records where the next page
        starts on the version (its change hands that page on). Bounded per call, so a long backlog is woken in
        as many calls as it takes, none near a function's time limit."""
        if self._rules is None:
            return self._wake(after, None)
        rules = self._rules
        return self._wake(after, lambda last: rules.wake_from(version, last))

    def network_changed(self, after: WaitingOrder | None = None) -> Arrival:
        """A location that stopped shipping may leave waiting orders nowhere to take more units (the
        one location they hold units at, under `max_shipments`), and one that ships again may give
        them the units it kept: the same wake as a new version of the rules (`rules_changed`), its
        next page recorded on the network (`CatalogRepository.wake_from`)."""
        return self._wake(after, self._catalog.wake_from)

    def _wake(self, after: WaitingOrder | None, hand_on: Callable[[WaitingOrder], None] | None) -> Arrival:
        """One page of the wake of `rules_changed` and `network_changed`; a full one is handed on
        (`hand_on`, None: not)."""
        result = Arrival()
        if self._backordered is None:
            return result
        rules: SourcingRules | None = None
        locations = None
        page = self._backordered.oldest(after, PAGE)
        for entry in page:
            order = self._orders.get(entry.order_id, consistent=True)
            if order is None or order.status is not S.BACKORDERED:
                continue  # moved on since the index was read
            # Oldest first across every sku, yet units an older order may take only once a
            # walk's restock lifts a stock take's exclusion (or once its queued `backordered`
            # write lands) are left to it, as a new order's ReserveStock leaves them.
            order, filled = self._fill(order, result)
            if order.status is not S.BACKORDERED:
                continue
            if not order.short_of():
                self._complete(order, result, filled)
                continue
            # The rules may leave it nowhere to take more units (the one location it holds units at
            # excluded, or no longer shipping, under max_shipments): no arrival would fill it. One
            # they leave no location at all waits for them to give it one (to_source_again).
            rules = rules or self._current_rules()
            locations = locations or self._catalog.list_locations()
            if to_source_again(order, locations, rules):
                self._source_again(order.id, result)
                continue
            # max_shipments may keep it from adding the location that now has its whole order (units
            # the rules no longer hold back there): sent back to be sourced, its units reserved for it.
            self._source_again_whole(order.id, result, rules=rules, locations=locations)
        if len(page) == PAGE and hand_on is not None:
            hand_on(page[-1])
        return result

    def demand(self, sku: str, buying: set[str], coming: Callable[[str], int]) -> Demand:
        """Units of `sku` the backordered orders in its queue still lack, by the location whose
        reorder point buys them: each order's at one location (`bought_at`, of those it may take
        them at, as a fill takes them, that have a point: `buying`), recorded on its queue entry
        the first time (`Demand.moves`, written by `place` once bought for there), so that a
        point added or removed later does not move it (bought twice at the old and the new
        place, or at neither). A recorded place is kept while the order may
        still take units there and it has a point or, its point gone, the units of `sku` there
        and still coming there (`coming`, asked once per such place: available, on open purchase
        orders or on a draft), less its safety stock, cover it with the older orders kept there;
        otherwise the order is placed again (what was bought for it is not there nor coming
        where it was counted, and no point buys there). Orders held while backordered count:
        they wait for the same units once released. An order not yet written backordered does not (nor one
        sent back to be sourced, `bought_for`): what it lacks is not known until then, and its own
        record buys it (functions/backorders). The oldest
        DEMAND_PAGES pages of DEMAND_PAGE entries of the queue at most, each page's orders read at
        once (`get_many`): this runs for every backordered order, inside one stream batch's time limit."""
        rules = self._current_rules()
        demand = Demand(kept=Counter(rules.safety_stock))
        locations = None
        after: WaitingOrder | None = None
        still = cache(coming)  # the same few places for many orders
        covered: Counter[str] = Counter()  # units of the orders kept where no point buys
        for _ in range(DEMAND_PAGES):
            if not (page := self._queue.waiting(sku, after, DEMAND_PAGE)):
                break
            locations = locations or self._catalog.list_locations()
            # A page at once (one BatchGetItem): every backordered order's record reads the queue,
            # so a burst of N backorders of one sku reads N x N orders.
            # Orders holding every unit of the sku they want (`holds`) lack none of it: not read,
            # so a queue entry never counts as demand twice (an order's wait is bought for in the
            # queues of the skus it lacks).
            wanting = [entry for entry in page if not entry.holds]
            orders = self._orders.get_many([entry.order_id for entry in wanting]) if wanting else {}
            for entry in wanting:
                order = orders.get(entry.order_id)
                if order is None or not bought_for(order):
                    continue  # allocated or cancelled since (its entry goes at the next arrival), or not yet waiting
                lacks, where = lacks_at(order, sku, locations, rules, restocked=True)
                if not lacks:
                    continue
                # Kept where it was bought while the order may take units there and a point buys
                # there, or what is there and still comes covers it (oldest first, as fills take
                # them): an order kept where too few come would be bought for by no point.
                place = entry.bought_at
                kept = place in where and (
                    place in buying or covered[place] + lacks <= still(place) - demand.kept[place]
                )
                if kept and place not in buying:
                    covered[place] += lacks
                at = place if kept else bought_at(order, sku, where, buying, locations)
                if at is None:
                    continue
                if at != entry.bought_at:
                    demand.moves.append((entry, at))
                demand.waiting[at] += lacks
                demand.at[order.id] = at
            after = page[-1]
        return demand

    def place(self, sku: str, demand: Demand) -> None:
        """Record on each queue entry `demand` placed anew where it is bought for now (its
        `moves`): only once the reading's record has bought for it there, so that a record that
        fails before it did is read again with the order still to place (and a redelivered one
        buys nothing twice: its buys are keyed by the record)."""
        for entry, at in demand.moves:
            self._queue.record_bought_at(sku, entry, at)

    def _fill(
        self, order: Order, result: Arrival, *, queue: str | None = None, restocked: tuple[str, str] | None = None,
    ) -> tuple[Order, bool]:  # fmt: skip
        """Workflow.fill_backorder for `order` (read backordered), noted in `result.filled` when its
        write reserved anything: the order as it is afterwards, and whether this fill wrote it. What
        another writer did meanwhile is not this walk's (another walk's fill, counted by that walk; an
        edit or a cancel, which empties the allocations)."""
        written: list[Order] = []
        filled = self._workflow.fill_backorder(
            order.id, actor=BACKORDER_ACTOR, queue=queue, restocked=restocked,
            written=written,
        )  # fmt: skip
        if written:
            result.filled.append(order.id)
        return filled, bool(written)

    def _source_again(self, order_id: str, result: Arrival) -> None:
        """Workflow.source_again, noted in `result.sourced_again` when its own write sent the order back."""
        written: list[Order] = []
        self._workflow.source_again(order_id, actor=BACKORDER_ACTOR, written=written)
        if written:
            result.sourced_again.append(order_id)

    def _source_again_whole(
        self, order_id: str, result: Arrival, location_id: str | None = None, *, rules: SourcingRules,
        locations: list[Location],
    ) -> None:  # fmt: skip
        """Workflow.source_again_whole, noted in `result.sourced_again` when its own write sent the order back."""
        written: list[Order] = []
        self._workflow.source_again_whole(
            order_id, location_id, actor=BACKORDER_ACTOR, rules=rules, locations=locations, written=written
        )
        if written:
            result.sourced_again.append(order_id)

    def _complete(self, order: Order, result: Arrival, filled: bool) -> None:
        """Start the workflow of `order`, every unit reserved; noted in `result.completed` when this
        walk's fill (`filled`) completed it. One found complete was completed by another's write (its
        own count), or its execution failed: started again all the same."""
        # Its entries stay until CreateShipments allocates it (Workflow.create_shipments removes
        # them): an execution that fails leaves the order in the queue, so the next arrival of
        # the sku starts it again.
        correlation_id = self._orders.placed_by(order.id)
        self._starter.start(
            order.id, channel=order.channel, correlation_id=correlation_id, rerun=f"backorder-v{order.version}"
        )
        if filled:
            result.completed.append(order.id)

    def _leave(self, order: Order | None, entry: WaitingOrder, sku: str) -> None:
        """The entries an order that no longer waits left (the removal after its write was lost):
        only those written before the version read, so that one its order wrote since, sent back
        (an edit) and waiting again, stays. An order gone: unconditionally."""
        if order is None:
            self._queue.remove(sku, entry)
            return
        for each in sorted({line.sku for line in order.lines} | {sku}):
            self._queue.leave(each, entry, order.version)


class ExpectedArrivals:
    """What a backordered order waits for and when more is expected, for reading it: per line
    short of units, the earliest expected date of an open purchase order for its sku at the
    locations that may supply the order now (its fulfilment's, less those the sourcing rules or a
    rejected shipment exclude, and those `max_shipments` keeps it from: where a fill takes units
    from), and where only a stock take's count of that sku excluded it (the receipt lifts it:
    lacks_at's `restocked`). Computed at each read, never stored."""

    def __init__(self, inventory: InventoryRepository, catalog: CatalogRepository, rules: SourcingRulesRepository):
        self._inventory = inventory
        self._catalog = catalog
        self._rules = rules

    def shown(self, orders: list[Order]) -> list[Order]:
        """`orders` with `awaiting_stock` set on those that wait: nothing is read when none does;
        otherwise the rules, the network and one batched read of the stock items for them all."""
        short = {order.id: order.short_of() for order in orders if order.status is S.BACKORDERED}
        short = {order_id: lines for order_id, lines in short.items() if lines}
        if not short:
            return orders
        rules, locations = self._rules.current(), self._catalog.list_locations()
        where: dict[tuple[str, str], set[str]] = {}  # by order and sku
        items: set[tuple[str, str]] = set()
        for order in orders:
            if order.id not in short:
                continue
            # Under max_shipments an order that ships from as many locations already is filled from those only.
            for sku in {line.sku for line in order.lines if line.line_id in short[order.id]}:
                _, where[order.id, sku] = lacks_at(order, sku, locations, rules, restocked=True)
                items |= {(sku, location_id) for location_id in where[order.id, sku]}
        expected = self._inventory.expected(items) if items else {}
        shown = []
        for order in orders:
            if order.id not in short:
                shown.append(order)
                continue
            lines = [
                AwaitingLine(
                    line_id=line.line_id,
                    sku=line.sku,
                    waiting_quantity=short[order.id][line.line_id],
                    expected_at=min(
                        (at for loc in where[order.id, line.sku] if (at := expected.get((line.sku, loc))) is not None),
                        default=None,
                    ),
                )
                for line in order.lines
                if line.line_id in short[order.id]
            ]
            shown.append(order.model_copy(update={"awaiting_stock": AwaitingStock(lines=lines)}))
        return shown
