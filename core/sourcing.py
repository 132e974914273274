"""Sourcing rules changes, and what-if sourcing: the plan the rules would make, reserving nothing."""

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Collection
from datetime import datetime
from typing import Annotated, Any

import pluggy
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, model_validator

from core.errors import InvalidRequest, NoPrice, PluginError, StaleVersion, UnknownSku
from core.events import OrderEvent
from core.hook_calls import call_hook
from core.ids import reservation_key
from core.models import (
    Address,
    Allocation,
    Fulfillment,
    HistoryEntry,
    Location,
    Order,
    OrderLine,
    Payment,
    PlaceOrder,
    Product,
    StockLevel,
    Totals,
    VisibleText,
    utc_now,
)
from core.money import Money
from core.ports import (
    Backorders,
    CatalogRepository,
    InventoryRepository,
    OrderRepository,
    SourcingRulesRepository,
    WaitingOrder,
)
from core.pricing import Pricing
from core.sourcing_rules import (
    SourcingRules,
    SourcingRulesHistory,
    SourcingRulesInput,
    next_version,
    unknown_locations,
)
from core.status import OrderStatus
from core.workflow_types import SourcingPlan

MAX_SIMULATED_ORDERS = 100
# The plan of one order may search every group of up to 12 locations (the built-in plugin's exact
# set cover) once per sku, and its reads grow with the skus: 100 orders of 45 lines (256 KiB) took
# 4.7 s of CPU here, beyond what the API function's 10 s on a third of a core can give.
MAX_SIMULATED_LINES = 500
HISTORY_PAGE = 50
BACKORDER_PAGE = 25
BEHIND_PAGES = 8  # at most 200 older orders read per sku before an order is sourced (or simulated)


def check_locations(given: SourcingRulesInput, locations: list[Location], prefix: str = "") -> None:
    """Raise 422 `unknown_location` when `given` names a location the network does not have."""
    details = unknown_locations(given, {loc.location_id for loc in locations}, prefix)
    if details:
        raise InvalidRequest(
            f"the sourcing rules name {len(details)} location(s) the network does not have",
            code="unknown_location",
            details=details,
        )


class SourcingRulesService:
    """`in_force` is told the rules each replace answers (those it wrote, or those already in force):
    a reader of the rules that caches them (capture's stock check) counts under them at once."""

    def __init__(
        self, rules: SourcingRulesRepository, catalog: CatalogRepository, clock: Callable[[], datetime] = utc_now,
        in_force: Callable[[SourcingRules], None] | None = None,
    ):  # fmt: skip
        self._rules = rules
        self._catalog = catalog
        self._clock = clock
        self._in_force = in_force or (lambda rules: None)

    def current(self) -> SourcingRules:
        return self._rules.current()

    def replace(self, given: SourcingRulesInput, by: str, expected_version: int | None = None) -> SourcingRules:
        """A new version made of `given`. Raises StaleVersion (409) when the version in force is
        not `expected_version` (when given: the one its author read), or when another change was
        written between the read and this write (unless it wrote these very rules): the caller reads
        the rules again. Rules that are the ones in force already are answered as they are, whatever
        version was read: a PUT sent again (its answer lost) makes no second version, and a change
        to them is none."""
        answer = self._replaced(given, by, expected_version)
        self._in_force(answer)
        return answer

    def _replaced(self, given: SourcingRulesInput, by: str, expected_version: int | None) -> SourcingRules:
        check_locations(given, self._catalog.list_locations())
        current = self._rules.current()
        if current.same_as(given):
            return current
        if expected_version is not None and current.version != expected_version:
            raise StaleVersion.unseen("the sourcing rules", current.version, expected_version, plural=True)
        new = next_version(current, given, at=self._clock(), by=by)
        try:
            self._rules.add(new)
        except StaleVersion:
            # Another PUT was written since the read: when it made these very rules (this one's
            # first attempt, still being written when it was sent again), they are the answer.
            if (written := self._rules.current()).same_as(given):
                return written
            raise
        return new

    def history(self, limit: int = HISTORY_PAGE, cursor: str | None = None) -> SourcingRulesHistory:
        items, next_cursor = self._rules.history(limit, cursor)
        return SourcingRulesHistory(items=items, next_cursor=next_cursor)


# --- Sourcing one order under rules -------------------------------------------------------------
# The workflow's ReserveStock and the simulation share these, so a simulation with the current
# rules plans what allocation would reserve on the same stock.


def eligible_locations(order_fulfillment_type: str, pickup_id: str | None, locations: list[Location]) -> list[Location]:
    """The locations that may supply an order: its pickup store, or every location that ships. The
    store supplies its pickup orders even once it takes no new ones (capture refuses those): the
    customer collects them there."""
    if order_fulfillment_type == "pickup":
        return [loc for loc in locations if loc.location_id == pickup_id]
    return [loc for loc in locations if loc.ships]


def destination_of(order: Order, locations: list[Location]) -> Address:
    if order.fulfillment.type == "pickup":
        store = next((loc for loc in locations if loc.location_id == order.fulfillment.location_id), None)
        if store is not None:
            return store.address.model_copy(update={"latitude": store.latitude, "longitude": store.longitude})
    return order.shipping_address


def sourceable(order: Order, locations: list[Location], rules: SourcingRules) -> list[Location]:
    """The locations that may supply `order`: eligible for its fulfilment, not excluded by the
    rules, and not one that rejected a shipment of it."""
    eligible = eligible_locations(order.fulfillment.type, order.fulfillment.location_id, locations)
    return [loc for loc in rules.eligible(eligible) if loc.location_id not in order.excluded_locations]


def lacks_at(
    order: Order, sku: str, locations: list[Location], rules: SourcingRules, *, restocked: bool = False
) -> tuple[int, set[str]]:
    """Units of `sku` a backordered `order` still lacks, and the locations it may take them at as a
    fill takes them: eligible for it, not excluded, within `max_shipments`. `restocked`: where it
    may take units of `sku` once they are restocked there, which a location only a stock take's
    count of `sku` excluded is (Order.count_exclusion_lapsed): what a reorder point buys for. Not
    what it may take now unless units were added there since that count (claims_at)."""
    short = order.short_of()
    lacks = sum(short.get(line.line_id, 0) for line in order.lines if line.sku == sku)
    if not lacks:
        return 0, set()
    used = {allocation.location_id for allocation in order.allocations}
    lifted = [loc for loc in order.counted_short if restocked and not order.excludes(loc, restocked=sku)]
    once_restocked = order.model_copy(
        update={"excluded_locations": [loc for loc in order.excluded_locations if loc not in lifted]}
    )  # only read here, never stored
    return lacks, {
        loc.location_id for loc in sourceable(once_restocked, locations, rules) if rules.admits(loc.location_id, used)
    }


def claims_at(
    order: Order, sku: str, locations: list[Location], rules: SourcingRules, free: Collection[str],
    inventory: InventoryRepository,
) -> tuple[int, set[str]]:  # fmt: skip
    """lacks_at of an older backordered `order`, weighed against the units of `sku` available at
    `free` locations (ReserveStock's look behind older orders, the what-if's): a location only a
    stock take's count of `sku` excluded it from is one it may take them at once units were added
    there since that count (InventoryRepository.restocked_since_count), as the walk of their
    arrival, a restock's, fills it there. Those stock items are read only for an order a count
    excluded, where units are free."""
    lacks, where = lacks_at(order, sku, locations, rules)
    if lacks and order.counted_short:
        _, once_restocked = lacks_at(order, sku, locations, rules, restocked=True)
        if lapsed := (once_restocked - where) & set(free):
            where |= {location_id for _, location_id in inventory.restocked_since_count({(sku, loc) for loc in lapsed})}
    return lacks, where


def stranded(order: Order, locations: list[Location], rules: SourcingRules) -> bool:
    """Whether a backordered `order` still short of units has nowhere to take them under `rules`: a
    fill adds only at locations that may supply it and that `max_shipments` admits beside those it
    holds units at, and none is left (its pickup store excluded; the locations it holds units at
    excluded with no room for another). No arrival fills it; sourced again, it may be."""
    if not order.short_of():
        return False
    used = {allocation.location_id for allocation in order.allocations}
    return not any(rules.admits(loc.location_id, used) for loc in sourceable(order, locations, rules))


def to_source_again(order: Order, locations: list[Location], rules: SourcingRules) -> bool:
    """Whether a backordered `order` is sent back to be sourced (`Workflow.source_again`): it is
    `stranded`, and a location may still supply it under `rules` and the network, which
    `max_shipments` keeps it from adding beside those it holds units at (excluded by the rules, or
    no longer shipping): sourced again, it ships from the others. One that the rules and the
    network leave no location at all (every location that ships excluded, none shipping, its
    pickup store excluded) waits `backordered`, keeping what it holds: a setting is put back as
    easily as it was made, while a cancel out_of_stock voids the payment for good. The change that
    gives it a location again wakes it (`BackorderAllocator.rules_changed`, `network_changed`).
    What an order's own circumstances take from it (a location's reject, a stock take there) sends
    it back to be sourced at once, and ReserveStock cancels it when no location is left."""
    return stranded(order, locations, rules) and bool(sourceable(order, locations, rules))


def out_of_reach(order: Order, locations: list[Location], rules: SourcingRules) -> bool:
    """Whether only the sourcing rules and the network leave `order` no location that may supply
    it (none `sourceable`: every location that ships excluded, none shipping, its pickup store
    excluded), while a location it has not rejected would supply it once they are put back
    (`reach_once_put_back`). False when its own rejects (or stock takes) took every such location
    from it."""
    return not sourceable(order, locations, rules) and bool(reach_once_put_back(order, locations))


def reach_once_put_back(order: Order, locations: list[Location]) -> list[Location]:
    """The locations that would supply `order` once the sourcing rules and the network are put
    back: its pickup store, or for a shipment every location of the network; never one it rejected."""
    if order.fulfillment.type == "pickup":
        store = order.fulfillment.location_id
        return [loc for loc in locations if loc.location_id == store and store not in order.excluded_locations]
    return [loc for loc in locations if loc.location_id not in order.excluded_locations]


def stocked_once_put_back(
    order: Order,
    reach: list[Location],
    levels: dict[str, list[StockLevel]],
    own: dict[tuple[str, str], int],
    skus: set[str],
) -> bool:
    """Whether the locations that would supply an `out_of_reach` order once the rules and the
    network are put back (`reach`: `reach_once_put_back`'s, which the caller read `levels` at) have
    together every unit its lines of `skus` (those that may not wait backordered) ask: on `levels`
    as the stock items hold them (no safety stock held back, a setting too) and what the order
    holds there itself (`own`, by (sku, location_id)). Then only a setting keeps it from its units,
    and ReserveStock parks it for a person (OutOfReach); otherwise it is out of stock whatever the
    settings, a business outcome that cancels it."""
    available = available_of(order, reach, levels)
    where = {loc.location_id for loc in reach}
    for (sku, location_id), units in own.items():
        if location_id in where and sku in available:
            available[sku] += units
    wanted: Counter[str] = Counter()
    for line in order.lines:
        if line.sku in skus:
            wanted[line.sku] += line.quantity
    return all(available[sku] >= units for sku, units in wanted.items())


def bought_at(order: Order, sku: str, where: set[str], buying: set[str], locations: list[Location]) -> str | None:
    """The one location whose reorder point buys what a backordered `order` lacks of `sku`, so that
    no unit is bought twice: of the locations `where` it may take them at (`lacks_at`) that have a
    reorder point for `sku` (`buying`), the one a fill tops it up at first (a location it already
    ships from, the most of its units of `sku` held there first), then the nearest to where it goes
    (when that has coordinates), then the first by id. None when none of them buys it. Units that
    arrive there are the order's, as at every location it may take them at. An order's backorder
    queue entry records it (`BackorderAllocator.demand`), so a point added or removed later does
    not move it."""
    candidates = where & buying
    if not candidates:
        return None
    lines = {line.line_id for line in order.lines if line.sku == sku}
    held: Counter[str] = Counter()
    for allocation in order.allocations:
        held[allocation.location_id] += allocation.quantity if allocation.line_id in lines else 0
    used = {allocation.location_id for allocation in order.allocations}
    destination = destination_of(order, locations)
    by_id = {loc.location_id: loc for loc in locations}

    def rank(location_id: str) -> tuple[bool, int, float, str]:
        distance = distance_km(by_id[location_id], destination) if location_id in by_id else None
        return location_id not in used, -held[location_id], distance or 0.0, location_id

    return min(candidates, key=rank)


# A plan's reasons are kept in the order's history, which is in the order's one DynamoDB item (at
# most 400 KB) and gets them again at every sourcing: so many, or so long, that the item outgrows
# that would fail the reservation on every retry and park a paid order. They are cut, not refused,
# for the same reason. 20 sentences of 500 characters explain the built-in plugin's choices (one
# per location an order ships from) with ids of a usual length.
MAX_REASONS = 20
MAX_REASON_CHARS = 500
_REASON = TypeAdapter(Annotated[str, VisibleText])


def _reasons_kept(plan: SourcingPlan) -> SourcingPlan:
    """`plan` with its first reasons, each of at most MAX_REASON_CHARS characters (a cut one ends
    with "…"); when there are more than MAX_REASONS, the last kept says how many more there were."""
    reasons = [
        reason if len(reason) <= MAX_REASON_CHARS else _REASON.validate_python(reason[: MAX_REASON_CHARS - 1] + "…")
        for reason in plan.reasons[:MAX_REASONS]
    ]
    if len(plan.reasons) > MAX_REASONS:
        left_out = len(plan.reasons) - MAX_REASONS + 1
        reasons[-1] = f"and {left_out} more reasons the sourcing plugin gave, not kept"
    return plan if reasons == plan.reasons else plan.model_copy(update={"reasons": reasons})


def ask_plugins(
    hook: pluggy.HookRelay,
    order: Order,
    eligible: list[Location],
    stock: dict[str, list[StockLevel]],
    destination: Address,
    rules: SourcingRules,
) -> SourcingPlan | None:
    """The sourcing plugins' plan, checked: every unit of every line exactly once, eligible
    locations only, at most `max_shipments` of them, its reasons bounded (MAX_REASONS,
    MAX_REASON_CHARS). None when no plugin can source it."""
    allowed = {loc.location_id for loc in eligible}

    def accept(plan: SourcingPlan) -> SourcingPlan:
        # Checked here, so a refused plan's PluginError names the plugin that made it.
        covered: dict[str, int] = defaultdict(int)
        for allocation in plan.allocations:
            if allocation.location_id not in allowed or allocation.quantity <= 0:
                raise PluginError(f"allocated {allocation} outside the eligible locations")
            covered[allocation.line_id] += allocation.quantity
        # A line whose every unit was cancelled stays on the order with none: nothing of it to cover.
        if covered != {line.line_id: line.quantity for line in order.lines if line.quantity}:
            raise PluginError("did not cover every unit of every line exactly once")
        # The rules in force are the core's, not a plugin's to ignore: more parcels than they allow.
        used = len({allocation.location_id for allocation in plan.allocations})
        if rules.max_shipments is not None and used > rules.max_shipments:
            raise PluginError(f"sourced from {used} locations, more than max_shipments ({rules.max_shipments})")
        return _reasons_kept(plan)

    plan = call_hook(
        hook.oms_source_order, accept,
        order=order, locations=eligible, stock=stock, destination=destination, rules=rules,
    )  # fmt: skip
    if plan is None:
        return None
    if not isinstance(plan, SourcingPlan):
        raise PluginError(f"oms_source_order returned {type(plan).__name__}, expected SourcingPlan")
    # One allocation per line and location: a line's units at a location are one reservation
    # (order#line), so parts named apart would be reserved as the last part alone while the
    # order recorded them all.
    merged: dict[tuple[str, str], int] = {}
    for allocation in plan.allocations:
        place = (allocation.line_id, allocation.location_id)
        merged[place] = merged.get(place, 0) + allocation.quantity
    if len(merged) == len(plan.allocations):
        return plan
    allocations = [Allocation(line_id=line_id, location_id=loc, quantity=q) for (line_id, loc), q in merged.items()]
    return plan.model_copy(update={"allocations": allocations})


def plan_within(
    hook: pluggy.HookRelay,
    order: Order,
    eligible: list[Location],
    stock: dict[str, list[StockLevel]],
    destination: Address,
    rules: SourcingRules,
) -> SourcingPlan | None:
    """The sourcing plugins' plan for `order` under `rules`, or, when no plan fits in
    `max_shipments` locations, the plan for what the `max_shipments` locations that supply the
    most of the plan made without that limit have: what a backordered order can hold now and
    still ship from no more locations. None when no plugin can source it at all."""
    plan = ask_plugins(hook, order, eligible, stock, destination, rules)
    if plan is not None or rules.max_shipments is None:
        return plan
    return _part_within(hook, order, eligible, stock, destination, rules, [])


def _part_within(
    hook: pluggy.HookRelay,
    order: Order,
    eligible: list[Location],
    stock: dict[str, list[StockLevel]],
    destination: Address,
    rules: SourcingRules,
    first: list[str],
) -> SourcingPlan | None:
    """The plan for what `max_shipments` locations have of `order`: the locations `first`, then
    those that supply the most of the plan made without that limit. None when no plugin can source it."""
    assert rules.max_shipments is not None
    unlimited = rules.model_copy(update={"max_shipments": None})
    widest = ask_plugins(hook, order, eligible, stock, destination, unlimited)
    if widest is None:
        return None
    units: Counter[str] = Counter()
    for allocation in widest.allocations:
        if allocation.location_id not in first:
            units[allocation.location_id] += allocation.quantity
    most = sorted(units, key=lambda location_id: -units[location_id])  # ties: the plan's order
    kept = [*first, *most][: rules.max_shipments]
    chosen = [loc for loc in eligible if loc.location_id in kept]
    part = reduced(order, available_of(order, chosen, stock))
    plan = ask_plugins(hook, part, chosen, stock, destination, unlimited)
    if plan is None:
        return None
    which = "which have what may not wait and supply the most of the rest" if first else "which supply the most of them"
    reason = (
        f"no plan covers the units in stock from at most max_shipments ({rules.max_shipments}) locations: "
        f"{', '.join(kept)}, {which}, supply what they have and the rest waits"
    )
    # Kept within the bounds as a plugin's reasons are: `kept` names up to 100 ids of 128 characters.
    return _reasons_kept(plan.model_copy(update={"reasons": [*plan.reasons, reason]}))


def available_of(order: Order, eligible: list[Location], stock: dict[str, list[StockLevel]]) -> dict[str, int]:
    """Units of each of the order's skus the eligible locations have for orders together."""
    allowed = {loc.location_id for loc in eligible}
    return {
        sku: sum(max(level.available, 0) for level in stock.get(sku, []) if level.location_id in allowed)
        for sku in {line.sku for line in order.lines}
    }


def reduced(order: Order, available: dict[str, int]) -> Order:
    """The part of `order` that can be reserved now: each short sku's lines cut to the units
    available (earlier lines first), lines left with none dropped. Only sourcing reads it."""
    left = dict(available)
    lines = []
    for line in order.lines:
        quantity = line.quantity
        if line.sku in left:
            quantity = min(quantity, left[line.sku])
            left[line.sku] -= quantity
        if quantity > 0:
            lines.append(line.model_copy(update={"quantity": quantity}))
    return order.model_copy(update={"lines": lines})


def allocation_plan(
    hook: pluggy.HookRelay,
    order: Order,
    eligible: list[Location],
    stock: dict[str, list[StockLevel]],
    destination: Address,
    rules: SourcingRules,
    cannot_wait: Callable[[set[str]], set[str]],
) -> SourcingPlan | None:
    """The plan ReserveStock makes for `order` on `stock`: the whole order when the plugins can
    source it; otherwise, when every sku it leaves short may wait backordered (`cannot_wait`
    answers which of the skus given may not; it is asked at most once, of all the order's skus),
    what is in stock of the skus the locations lack, from no more locations than `max_shipments`
    (those that supply the most; when they leave a product that may not wait short, those the
    plugins source its units from first): the order holds that and waits for the rest. None when
    it cannot be allocated (no location, or a sku that may not wait left short): it ends out of
    stock. Capture asks the same, so an order it accepts is not then cancelled for a reason it
    could have seen."""
    if not eligible:
        return None
    available = available_of(order, eligible, stock)
    wanted: Counter[str] = Counter()
    for line in order.lines:
        wanted[line.sku] += line.quantity
    cannot: set[str] | None = None

    def may_not(skus: set[str]) -> set[str]:
        # Asked once, of all the order's skus, when first needed: each ask may read the catalog.
        nonlocal cannot
        if cannot is None:
            cannot = cannot_wait(set(wanted))
        return skus & cannot

    lacking = {sku: available[sku] for sku, units in wanted.items() if available[sku] < units}
    if lacking and may_not(set(lacking)):
        return None
    sourced = reduced(order, lacking) if lacking else order
    plan = plan_within(hook, sourced, eligible, stock, destination, rules)
    if plan is None:
        return None
    waits = skus_left_short(order, plan)
    if waits and may_not(waits) and rules.max_shipments is not None:
        plan = around_what_cannot_wait(hook, sourced, eligible, stock, destination, rules, may_not(set(wanted)))
        if plan is None:
            return None
        waits = skus_left_short(order, plan)
    if waits and may_not(waits):
        return None
    if waits:
        # The plugins planned the part in stock (`sourced`): their reasons are about it alone ("the
        # whole order", or with nothing in stock "no units to source", left out), so the history of
        # an order left short says first what it waits for.
        said = [_waiting(order, plan, rules, set(lacking)), *(plan.reasons if plan.allocations else [])]
        plan = _reasons_kept(plan.model_copy(update={"reasons": said}))
    return plan


def _waiting(order: Order, plan: SourcingPlan, rules: SourcingRules, lacking: set[str]) -> str:
    """The reason an order `plan` leaves short waits backordered: its units left short, and that
    the locations that may supply it (within `max_shipments` when the limit, not their stock, left a
    sku short) hold no more for it now."""
    short = left_short(order, plan)
    units = [f"{line.sku} x{short[line.line_id]} ({line.line_id})" for line in order.lines if line.line_id in short]
    # Five named at most; beyond, four and the rest counted (two or more), never "1 more lines".
    named = ", ".join(units) if len(units) <= 5 else ", ".join(units[:4]) + f" and {len(units) - 4} more lines"
    limited = rules.max_shipments is not None and any(
        line.sku not in lacking for line in order.lines if line.line_id in short
    )
    within = f" within max_shipments ({rules.max_shipments})" if limited else ""
    held = "; the reasons after this one are about the units it holds" if plan.allocations else ""
    why = "more than the locations that may supply the order hold for it now"
    return f"waiting backordered for {named}: {why}{within}{held}"


def around_what_cannot_wait(
    hook: pluggy.HookRelay,
    order: Order,
    eligible: list[Location],
    stock: dict[str, list[StockLevel]],
    destination: Address,
    rules: SourcingRules,
    cannot: set[str],
) -> SourcingPlan | None:
    """Under `max_shipments`, when the locations that supply the most of `order` lack a product
    that may not wait (the skus `cannot`): the plan for what the locations the plugins source
    those products from (within `max_shipments`) have, then those that supply the most of the
    rest; the rest may wait there. None when those products fit no `max_shipments` locations."""
    must = order.model_copy(update={"lines": [line for line in order.lines if line.sku in cannot]})
    if must.lines == order.lines:
        return None  # the whole order may not wait: plan_within found no plan for it
    around = ask_plugins(hook, must, eligible, stock, destination, rules)
    if around is None:
        return None
    first = [loc.location_id for loc in eligible if loc.location_id in {a.location_id for a in around.allocations}]
    return _part_within(hook, order, eligible, stock, destination, rules, first)


def skus_left_short(order: Order, plan: SourcingPlan) -> set[str]:
    """The skus of the lines `plan` does not cover whole (what the order waits for): worked out once
    per plan (asked again for each line, a 100-line order cost 100 passes over its lines and
    allocations)."""
    short = left_short(order, plan)
    return {line.sku for line in order.lines if line.line_id in short}


def left_short(order: Order, plan: SourcingPlan) -> dict[str, int]:
    """{line_id: units} of each line `plan` does not cover whole."""
    planned: Counter[str] = Counter()
    for allocation in plan.allocations:
        planned[allocation.line_id] += allocation.quantity
    return {
        line.line_id: line.quantity - planned[line.line_id]
        for line in order.lines
        if planned[line.line_id] < line.quantity
    }


# --- What-if ------------------------------------------------------------------------------------


SimulatedOrderId = Annotated[str, StringConstraints(pattern=r"^ord_[a-z2-7]{24}$")]


class _OrderIds(BaseModel):
    model_config = ConfigDict(defer_build=True)
    orders: list[SimulatedOrderId]


class _OrderBodies(BaseModel):
    model_config = ConfigDict(defer_build=True)
    orders: list[PlaceOrder]


class SimulateSourcing(BaseModel):
    """The body of POST /sourcing/simulate."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    @model_validator(mode="before")
    @classmethod
    def _one_kind_of_order(cls, data: Any) -> Any:
        # The union below would judge each item as both kinds and name both in its errors
        # ("orders.list[PlaceOrder][0].lines[0].quantity" and "orders.list[constrained-str][0]"):
        # judged first as the kind its first item is, an error names its field as a client sent it.
        if not isinstance(data, dict) or "orders" not in data:
            return data
        orders = data["orders"]
        if not isinstance(orders, list) or orders:
            kind = _OrderBodies if isinstance(orders, list) and not isinstance(orders[0], str) else _OrderIds
            kind.model_validate({"orders": orders})
        return data

    orders: Annotated[
        list[SimulatedOrderId] | list[PlaceOrder],
        Field(
            min_length=1,
            max_length=MAX_SIMULATED_ORDERS,
            description="Order ids (stored orders, as they are now) or PlaceOrder bodies, not both",
        ),
    ]
    rules: SourcingRulesInput | None = None


class SimulatedLine(BaseModel, defer_build=True):
    line_id: str
    sku: str
    quantity: int


class SimulatedShipment(BaseModel, defer_build=True):
    location_id: str
    lines: list[SimulatedLine]
    distance_km: float | None


class SimulatedOrder(BaseModel, defer_build=True):
    order_id: str | None
    shipments: list[SimulatedShipment]
    unfillable: list[SimulatedLine]
    reasons: list[str]


class SimulationSummary(BaseModel, defer_build=True):
    orders: int
    shipments: int
    unfillable_units: int
    mean_distance_km: float | None = Field(description="The mean over shipments whose distance is known; null: none")


class Simulation(BaseModel, defer_build=True):
    rules: SourcingRules = Field(
        description="The rules simulated: the current ones with those given (`version` is the current one's; "
        "each plan's first reason names the rules given otherwise)"
    )
    items: list[SimulatedOrder]
    summary: SimulationSummary


def _before_cancel(order: Order, history: list[HistoryEntry]) -> Order:
    """The cancelled `order` with the units its cancel took back on its lines (the `cancelled` or
    `pickup_expired` entry's `lines`), as it stood when cancelled; one cancelled before a cancel
    took its units (its lines kept) is as it is."""
    ends = (OrderEvent.CANCELLED, OrderEvent.PICKUP_EXPIRED)
    entry = next((e for e in reversed(history) if e.type in ends and "lines" in (e.detail or {})), None)
    taken: dict[str, int] = entry.detail["lines"] if entry is not None and entry.detail else {}
    lines = [line.model_copy(update={"quantity": line.quantity + taken.get(line.line_id, 0)}) for line in order.lines]
    return order.model_copy(update={"lines": lines})


class Simulator:
    """Plans each order as ReserveStock would (no shipment, every unit unfillable, for one it would
    cancel out_of_stock), from one read of the locations, one batched read of the stock, one of
    the products (for bodies, under max_shipments, or once an order is short; and for each stored
    order one of the units it holds, which it counts as its own as ReserveStock does; and the
    backorder queues of the skus in stock, whose older orders' units it leaves them as ReserveStock
    does), and stores, reserves and sends nothing.
    Each order is planned on the same stock: one order's plan does not consume units another's
    could take."""

    def __init__(
        self,
        orders: OrderRepository,
        catalog: CatalogRepository,
        inventory: InventoryRepository,
        rules: SourcingRulesRepository,
        plugins: pluggy.PluginManager,
        backorders: Backorders,
    ):
        self._orders = orders
        self._catalog = catalog
        self._inventory = inventory
        self._rules = rules
        self._hook = plugins.hook
        self._pricing = Pricing(plugins)
        self._backorders = backorders

    def simulate(self, request: SimulateSourcing, channel: str | None = None) -> Simulation:
        """`channel`: the caller's, when its key is bound to one; another channel's order is
        refused exactly as an unknown one, so its plan (lines, distances) and existence stay hidden."""
        locations = self._catalog.list_locations()
        rules = self._rules.current()
        changed: list[str] = []
        if request.rules is not None:
            check_locations(request.rules, locations, prefix="rules.")
            changed = rules.changed_by(request.rules)
            rules = rules.with_changes(request.rules)
        self._check_fulfilment(request, locations)
        orders = [
            self._stored(each, index, channel) if isinstance(each, str) else (None, unplaced(each, index + 1))
            for index, each in enumerate(request.orders)
        ]
        if sum(len(order.lines) for _, order in orders) > MAX_SIMULATED_LINES:
            raise InvalidRequest(
                f"a what-if plans at most {MAX_SIMULATED_LINES} order lines in all: simulate these orders in parts",
                details=[{"field": "orders", "message": f"at most {MAX_SIMULATED_LINES} order lines in all"}],
            )
        skus = {line.sku for _, order in orders for line in order.lines}
        # One read at most: bodies' skus are checked, and which products may wait decides whether an
        # order short of them waits or is cancelled, and, under max_shipments, what is held first.
        # Stored orders in stock without that limit need no product.
        needed = rules.max_shipments is not None or any(isinstance(each, PlaceOrder) for each in request.orders)
        products = self._catalog.get_products(skus) if needed else None
        if products is not None:
            self._check_skus(request, products)
            self._check_prices(request, products)

        def cannot_wait(asked: set[str]) -> set[str]:
            nonlocal products
            if products is None:
                products = self._catalog.get_products(skus)
            return {sku for sku in asked if sku not in products or not products[sku].allow_backorder}

        levels = self._inventory.levels(skus, [loc.location_id for loc in locations])
        stock = rules.for_orders(levels)
        owed = self._owed(stock, locations, rules)
        items = []
        for order_id, order in orders:
            own = self._held(order, locations) if order_id is not None else {}
            on = _behind_older(order, _with_own(stock, own) if own else stock, owed, own)
            # A stored order waits for the skus it was sold to wait for, as ReserveStock lets it.
            may_wait = set(order.may_wait)
            waits = cannot_wait if not may_wait else lambda asked, may_wait=may_wait: cannot_wait(asked) - may_wait
            items.append(self._plan(order_id, order, locations, on, rules, waits, changed, levels=levels, own=own))
        return Simulation(rules=rules, items=items, summary=_summary(items))

    def _owed(
        self, stock: dict[str, list[StockLevel]], locations: list[Location], rules: SourcingRules
    ) -> dict[str, list[tuple[WaitingOrder, int, set[str]]]]:
        """For each sku some location has units of for orders (`stock`): the backordered orders
        waiting in its queue, oldest first, each with the units it lacks and the locations it may
        take them at (`lacks_at`). Read as ReserveStock reads them (Workflow._behind_older): at most
        BEHIND_PAGES pages of the queue, each page's orders in one batched read, and no further
        than those orders' claims cover the units there; held orders are passed over, and so are,
        unread, those whose entry says they may take none of the units there (`may_take_at`)."""
        owed: dict[str, list[tuple[WaitingOrder, int, set[str]]]] = {}
        by_id = {loc.location_id: loc for loc in locations}
        for sku, levels in stock.items():
            free = {level.location_id: level.available for level in levels if level.available > 0}
            claims: list[tuple[WaitingOrder, int, set[str]]] = []
            after = None
            for _ in range(BEHIND_PAGES):
                if not free or not (page := self._backorders.waiting(sku, after, BACKORDER_PAGE)):
                    break
                # A store's pickup order where only warehouses hold units, or a ship order where
                # only stores that ship nothing do: it may take none of them, and is not read.
                # An order holding every unit of the sku it wants (`holds`) lacks none: not read.
                takers = [
                    entry for entry in page if not entry.holds and any(entry.may_take_at(by_id.get(at)) for at in free)
                ]
                waiting = self._orders.get_many([entry.order_id for entry in takers]) if takers else {}
                for entry in takers:
                    older = waiting.get(entry.order_id)
                    if older is None or not entry.waits_for(older):
                        continue
                    lacks, where = claims_at(older, sku, locations, rules, free, self._inventory)
                    if not lacks or not where:
                        continue
                    claims.append((entry, lacks, where))
                    for location_id in where & set(free):
                        free[location_id] -= lacks
                        if free[location_id] <= 0:
                            del free[location_id]
                after = page[-1]
            if claims:
                owed[sku] = claims
        return owed

    def _held(self, order: Order, locations: list[Location]) -> dict[tuple[str, str], int]:
        """The units the stored `order` holds reserved, by (sku, location_id): one batched read, as
        ReserveStock makes it (under the lines edits replaced too: Order.reservation_lines). Sourced
        again (after an edit) or filled, an order counts them as available to it, so its plan does too."""
        keys: dict[tuple[str, str], list[str]] = defaultdict(list)
        for line_id, sku in order.reservation_lines():
            for location in locations:
                keys[(sku, location.location_id)].append(reservation_key(order.id, line_id))
        held: dict[tuple[str, str], int] = defaultdict(int)
        for (sku, location_id, _), units in self._inventory.reservations(dict(keys)).items():
            held[(sku, location_id)] += units
        return held

    def _check_fulfilment(self, request: SimulateSourcing, locations: list[Location]) -> None:
        """Raise 422 for a body whose fulfilment placing it refuses (CaptureService._sources): a
        pickup at a location that offers none, or a location named on a shipped order. Planned, the
        one was all unfillable and the other planned as any shipped order."""
        pickups = {loc.location_id for loc in locations if loc.pickup}
        known = {loc.location_id for loc in locations}
        for index, each in enumerate(request.orders):
            if not isinstance(each, PlaceOrder):
                continue
            field = f"orders[{index}].fulfillment.location_id"
            if each.fulfillment.type == "ship" and each.fulfillment.location_id is not None:
                raise InvalidRequest(
                    "location_id is only for pickup orders",
                    details=[{"field": field, "message": "only allowed with type pickup"}],
                )
            if each.fulfillment.type == "pickup" and each.fulfillment.location_id is None:
                raise InvalidRequest(
                    "a pickup order needs the store's location_id",
                    details=[{"field": field, "message": "required for pickup"}],
                )
            if each.fulfillment.type == "pickup" and each.fulfillment.location_id not in known:
                raise InvalidRequest(
                    f"no location {each.fulfillment.location_id}",
                    code="unknown_location",  # as placing the body answers (CaptureService._sources)
                    details=[{"field": field, "message": "not a location of the network"}],
                )
            if each.fulfillment.type == "pickup" and each.fulfillment.location_id not in pickups:
                raise InvalidRequest(
                    "that location does not offer pickup",
                    details=[{"field": field, "message": "no pickup location with this id"}],
                )

    def _check_skus(self, request: SimulateSourcing, products: dict[str, Product]) -> None:
        """Raise 422 `unknown_sku` naming each body's line whose sku the catalog (`products`)
        lacks, as placing that body would: a plan for it would answer a question no order can ask."""
        bodies = [(index, each) for index, each in enumerate(request.orders) if isinstance(each, PlaceOrder)]
        unknown = [
            {"field": f"orders[{index}].lines[{n}].sku", "message": f"no product {line.sku}"}
            for index, body in bodies
            for n, line in enumerate(body.lines)
            if line.sku not in products
        ]
        if unknown:
            raise UnknownSku("unknown sku", details=unknown)

    def _check_prices(self, request: SimulateSourcing, products: dict[str, Product]) -> None:
        """Raise 422 `no_price` naming each body's line whose product no pricing plugin prices in
        the body's currency, as placing that body would (Pricing.price: its lines of one sku priced
        as one, their quantities summed), with its message for the first: a plan for it would answer
        a question no order can ask."""
        unpriced: list[tuple[str, str, list[str]]] = []
        for index, body in enumerate(request.orders):
            if not isinstance(body, PlaceOrder):
                continue
            for sku, lines in self._pricing.unpriced(body, products).items():
                unpriced.append((sku, body.currency, [f"orders[{index}].lines[{n}].sku" for n in lines]))
        if unpriced:
            sku, currency, _ = unpriced[0]
            raise NoPrice(
                f"no price for {sku} in {currency}",
                details=[
                    {"field": field, "message": f"no price in {in_currency}"}
                    for _, in_currency, fields in unpriced
                    for field in fields
                ],
            )

    def _stored(self, order_id: str, index: int, channel: str | None) -> tuple[str, Order]:
        """The stored order `orders[index]` names; 422 naming that field when it names none the
        caller may see."""
        order = self._orders.get(order_id)
        if order is None or (channel is not None and order.channel != channel):
            raise InvalidRequest(
                f"no order {order_id} to simulate",
                details=[{"field": f"orders[{index}]", "message": "no order with this id"}],
            )
        if order.status is OrderStatus.CANCELLED:
            # Its lines are at zero: the what-if plans the units its cancel took (one read more).
            found = self._orders.history(order_id)
            order = _before_cancel(order, found[1]) if found else order
        return order_id, order

    def _plan(
        self,
        order_id: str | None,
        order: Order,
        locations: list[Location],
        stock: dict[str, list[StockLevel]],
        rules: SourcingRules,
        cannot_wait: Callable[[set[str]], set[str]],
        changed: list[str],
        *,
        levels: dict[str, list[StockLevel]],
        own: dict[tuple[str, str], int],
    ) -> SimulatedOrder:
        """`stock`: the units orders may take as ReserveStock counts them; `levels`: as the stock
        items hold them, and `own`: what the order holds (by (sku, location_id)), which say whether
        only the settings keep an order they leave no location from its units."""
        eligible = sourceable(order, locations, rules)
        destination = destination_of(order, locations)
        # The plan ReserveStock makes: none (it cancels the order out_of_stock, unless only the
        # settings leave it no location) when what the locations lack, or what max_shipments
        # leaves short, may not wait.
        plan = allocation_plan(self._hook, order, eligible, stock, destination, rules, cannot_wait)
        sku_of = {line.line_id: line.sku for line in order.lines}
        planned: dict[str, int] = defaultdict(int)
        by_location: dict[str, list[SimulatedLine]] = defaultdict(list)
        reasons = [rules.named(changed)]
        if plan is not None:
            reasons.extend(plan.reasons)
            for a in plan.allocations:
                planned[a.line_id] += a.quantity
                by_location[a.location_id].append(
                    SimulatedLine(line_id=a.line_id, sku=sku_of[a.line_id], quantity=a.quantity)
                )
        unfillable = [
            SimulatedLine(line_id=line.line_id, sku=line.sku, quantity=line.quantity - planned[line.line_id])
            for line in order.lines
            if line.quantity > planned[line.line_id]
        ]
        if unfillable and not eligible:
            # Said as it is: the network (no location ships, or those left rejected it) before the rules.
            network = eligible_locations(order.fulfillment.type, order.fulfillment.location_id, locations)
            if any(loc.location_id not in order.excluded_locations for loc in network):
                reasons.append("no location may supply this order under these rules")
            else:
                reasons.append("no location that ships orders may supply this order")
            if order_id is None:
                # A body is an order not placed yet: capture refuses it before any allocation
                # (CaptureService._check_stock), whatever allocation would do with one placed before.
                reasons.append(WOULD_BE_REFUSED)
        if plan is not None and unfillable:
            reasons.append("allocation would hold what is planned and wait backordered for the unfillable units")
        if plan is None and unfillable:
            # What ReserveStock does when only the rules and the network leave it no location.
            reach = out_of_reach(order, locations, rules)
            reasons.append(_out_of_reach_outcome(order, locations, levels, own, cannot_wait) if reach else WOULD_CANCEL)
        point = {loc.location_id: loc for loc in locations}
        shipments = [
            SimulatedShipment(
                location_id=location_id, lines=lines, distance_km=distance_km(point[location_id], destination)
            )
            for location_id, lines in sorted(by_location.items())
        ]
        return SimulatedOrder(order_id=order_id, shipments=shipments, unfillable=unfillable, reasons=reasons)


WOULD_BE_REFUSED = "placed now, this order would be refused (409 insufficient_stock): no location may supply it"
WOULD_CANCEL = (
    "allocation would cancel this order out_of_stock: no plan covers, from the locations that may supply it, "
    "what may not wait backordered"
)


def _out_of_reach_outcome(
    order: Order,
    locations: list[Location],
    levels: dict[str, list[StockLevel]],
    own: dict[tuple[str, str], int],
    cannot_wait: Callable[[set[str]], set[str]],
) -> str:
    """What ReserveStock does with an order only the rules and the network leave no location
    (`out_of_reach`), said as a what-if's reason: it waits backordered when every product may wait,
    is parked for a person when the locations left out have the units of those that may not
    (`stocked_once_put_back`), and is cancelled out_of_stock only when they have not."""
    cannot = cannot_wait({line.sku for line in order.lines})
    if not cannot:
        return "allocation would wait backordered for all of it until the rules or the network give it a location"
    if stocked_once_put_back(order, reach_once_put_back(order, locations), levels, own, cannot):
        return (
            "allocation would put this order on hold for a person, its payment kept: the locations the rules and "
            "the network leave out have its units"
        )
    return WOULD_CANCEL


def _behind_older(
    order: Order,
    stock: dict[str, list[StockLevel]],
    owed: dict[str, list[tuple[WaitingOrder, int, set[str]]]],
    own: dict[tuple[str, str], int],
) -> dict[str, list[StockLevel]]:
    """`stock` less what the backordered orders older than `order` are `owed` (Simulator._owed)
    where they may take it, as ReserveStock holds it back (Workflow._behind_older): a fill goes
    oldest first, so a newer order does not get units an older one waits for. The units `order`
    holds (`own`, counted in `stock`) stay its own."""
    behind = WaitingOrder(created_at=order.created_at, order_id=order.id)
    held: dict[tuple[str, str], int] = defaultdict(int)
    for sku, claims in owed.items():
        for entry, lacks, where in claims:
            if entry >= behind:
                break
            for location_id in where:
                held[(sku, location_id)] += lacks
    return held_back(stock, held, own)


def held_back(
    stock: dict[str, list[StockLevel]], held: dict[tuple[str, str], int], own: dict[tuple[str, str], int]
) -> dict[str, list[StockLevel]]:
    """`stock` less the units older backordered orders claim (`held`, by (sku, location_id)), taken
    out of the units beyond the order's own (`own`, counted in `stock`): ReserveStock's and the
    what-if's one rule (Workflow._behind_older, _behind_older)."""
    if not held:
        return stock

    def left_to(level: StockLevel) -> int:
        place = (level.sku, level.location_id)
        return level.available - min(held.get(place, 0), max(0, level.available - own.get(place, 0)))

    return {
        sku: [level.model_copy(update={"available": left_to(level)}) for level in levels]
        for sku, levels in stock.items()
    }


def _with_own(levels: dict[str, list[StockLevel]], held: dict[tuple[str, str], int]) -> dict[str, list[StockLevel]]:
    """`levels` (the units orders may take: less the safety stock) with the units an order holds
    (`held`, by (sku, location_id)) available to it again, as ReserveStock counts them: safety
    stock is kept back from what is available, never out of what the order holds already."""
    return {
        sku: [
            level.model_copy(update={"available": max(level.available, 0) + held[(sku, level.location_id)]})
            if held.get((sku, level.location_id))
            else level
            for level in listed
        ]
        for sku, listed in levels.items()
    }


def distance_km(location: Location, destination: Address) -> float | None:
    """Great-circle kilometres (to 0.1 km) from `location` to `destination`'s coordinates; None
    when the address has none (the core has no map: the sourcing plugin places such an address at
    its region's or country's centre from its own data file)."""
    if destination.latitude is None or destination.longitude is None:
        return None
    here = (location.latitude, location.longitude)
    return round(great_circle_km(here, (destination.latitude, destination.longitude)), 1)


EARTH_RADIUS_KM = 6371.0088  # the IUGG mean radius, as the built-in sourcing plugin measures


def great_circle_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def _summary(items: list[SimulatedOrder]) -> SimulationSummary:
    distances = [s.distance_km for item in items for s in item.shipments if s.distance_km is not None]
    return SimulationSummary(
        orders=len(items),
        shipments=sum(len(item.shipments) for item in items),
        unfillable_units=sum(line.quantity for item in items for line in item.unfillable),
        mean_distance_km=round(sum(distances) / len(distances), 1) if distances else None,
    )


def unplaced(body: PlaceOrder, index: int = 1) -> Order:
    """A body as an order sourcing can read: its lines, address and fulfilment; prices are not
    sourcing's business, so they are zero."""
    if body.fulfillment.type == "pickup" and not body.fulfillment.location_id:
        raise InvalidRequest(f"orders[{index - 1}]: a pickup order names its store in fulfillment.location_id")
    zero = Money.of("0", body.currency)
    now = utc_now()
    return Order(
        id=f"simulated_{index}",
        status=OrderStatus.AUTHORIZED,
        channel=body.channel,
        external_id=body.external_id,
        currency=body.currency,
        customer=body.customer,
        lines=[
            OrderLine(
                line_id=f"L{n}",
                sku=line.sku,
                quantity=line.quantity,
                unit_price=zero,
                discount=zero,
                tax=zero,
                total=zero,
            )
            for n, line in enumerate(body.lines, 1)
        ],
        shipping_address=body.shipping_address,
        fulfillment=Fulfillment.model_validate(body.fulfillment.model_dump()),
        totals=Totals(subtotal=zero, discount=zero, shipping=zero, tax=zero, grand_total=zero),
        payment=Payment(method=body.payment.method, authorized=zero, captured=zero, refunded=zero),
        created_at=now,
        updated_at=now,
        version=1,
    )
