"""Built-in sourcing under the sourcing rules: nearest per line, or as few locations as possible, nearest first.

With `prefer: nearest` (the default rules) each line comes from the nearest location that has all
of it; a line no single location has takes from the nearest ones first. When that plan needs more
locations than `max_shipments`, or with `prefer: fewest_shipments`, the order is sourced as below
(and gets no plan when even that needs more than `max_shipments`). A caller that passes no rules
(`rules=None`) gets the defaults.

1. Whole order: the nearest eligible location whose `available` stock covers every sku of the
   order (lines of the same sku are summed) supplies every line.
2. Otherwise a split across the fewest locations: the smallest set of locations whose stock
   together covers the order (among equally small sets, the one nearest in total), then each line
   takes from the nearest location of that set first. A line may be split across locations.
   Finding the fewest is a set-cover search, exact up to EXACT_SEARCH_LIMIT eligible locations
   holding some of the order (4,096 subsets at most); beyond that a greedy split is used
   (repeatedly the location that can supply the most of what is left), which almost always finds
   the fewest but not always: for A x4 + B x4 with G = {A 3, B 3}, P = {A 4}, Q = {B 4} greedy
   takes G, P and Q, where P and Q do. When the greedy split needs more than `max_shipments`
   locations, the groups of at most `max_shipments` are searched instead, smallest first, by a
   branch and bound that picks the group the exact search would pick, in at most 4,096 steps (a
   location taken into a group): it ends branches whose locations left hold too little of what is
   short, or cannot be nearer in total than the best group found (the pair the two ends of a line
   of a thousand stores ship, none holding as much of each sku as another, takes three steps).
   Where it gives up (its bounds do not see that no group fits, or there are very many that do),
   the groups of each size are counted instead, smallest first, as far as 4,096 groups go, over
   the locations fewer than that many others outhold (as near or nearer, and at least as much of
   each sku up to what the order needs: a group with one of the others is beaten by the one with
   an outholder for it), so that hundreds of stores with a unit each do not end the search; no
   plan when that too finds none.
3. When the eligible stock cannot cover the order, no plan (None): the order ends out_of_stock,
   unless another sourcing plugin answers first (this one is `trylast`).

Distance is the great-circle (haversine) distance from a location's coordinates to the
destination's. A destination without coordinates is placed at the centre of its region (US
states, Canadian provinces) or country, from `plugins/data/geo_centroids.json` or the file in
`OMS_PLUGIN_NEAREST_SOURCING_CENTROIDS_FILE`; when neither is listed, distances are unknown and
locations are taken in order of their id. Each choice is explained by one sentence of the plan's
`reasons`.

Only the `locations` given are used (the core already chose the eligible ones: for a pickup order,
just the store) and only their `stock`. The plan is deterministic for the same inputs.
"""

import bisect
import itertools
import math
import operator
from collections import Counter
from typing import Annotated, NamedTuple

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from core import hookimpl
from core.models import COUNTRIES, Address, Allocation, Latitude, Location, Longitude, Order, StockLevel, units_text
from core.sourcing_rules import Prefer, SourcingRules
from core.workflow_types import SourcingPlan
from plugins.data_files import data_file_path, load_data_file

NAME = "nearest_sourcing"  # its entry-point name, which namespaces its settings
GEO_CENTROIDS_FILE_ENV = "OMS_PLUGIN_NEAREST_SOURCING_CENTROIDS_FILE"
EARTH_RADIUS_KM = 6371.0088  # the IUGG mean radius


def _known_country(code: str) -> str:
    if code not in COUNTRIES:
        raise ValueError(f"{code} is not an ISO 3166-1 alpha-2 country code")
    return code


CountryCode = Annotated[str, AfterValidator(_known_country)]
RegionCode = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{1,3}$")]
Point = tuple[Latitude, Longitude]


class GeoCentroids(BaseModel):
    """The centroid data file: approximate centres of countries and of regions within them."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, defer_build=True)

    note: str = Field(default="", alias="_note")
    countries: dict[CountryCode, Point]
    regions: dict[CountryCode, dict[RegionCode, Point]] = Field(default_factory=dict)


def load_geo_centroids() -> GeoCentroids:
    """The configured centroid table. Raises DataFileError for a malformed file."""
    return load_data_file(data_file_path(NAME, "centroids_file", "geo_centroids.json"), GeoCentroids)


def haversine_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance in kilometres between two (latitude, longitude) points in degrees."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


class Destination(NamedTuple):
    """Where distances are measured to, and (when it is not the address's own point) how it was placed."""

    point: tuple[float, float] | None
    approximation: str | None


def locate(address: Address) -> Destination:
    if address.latitude is not None and address.longitude is not None:
        return Destination((address.latitude, address.longitude), None)
    centroids = load_geo_centroids()
    region = _region_code(address)
    region_point = centroids.regions.get(address.country, {}).get(region) if region else None
    if region_point is not None:
        return Destination(
            region_point,
            f"the destination has no coordinates: distances are measured to the centre of {region}, {address.country}",
        )
    country_point = centroids.countries.get(address.country)
    if country_point is not None:
        return Destination(
            country_point,
            f"the destination has no coordinates: distances are measured to the centre of {address.country}",
        )
    return Destination(
        None,
        "the destination has no coordinates and the centroid table does not know its region or country: "
        "distances are unknown, so locations are taken in order of their id",
    )


def _region_code(address: Address) -> str | None:
    # Addresses write "CA", "ca" or the ISO 3166-2 form "US-CA".
    if not address.region:
        return None
    region = address.region.strip().upper()
    prefix = f"{address.country}-"
    return region.removeprefix(prefix) if region.startswith(prefix) else region


class Candidate(NamedTuple):
    location_id: str
    distance_km: float | None

    @property
    def rank(self) -> tuple[float, str]:
        # Nearest first; equal or unknown distances fall back to the id, so the plan is deterministic.
        return (self.distance_km if self.distance_km is not None else 0.0, self.location_id)

    @property
    def distance(self) -> str:
        return f"{self.distance_km:,.0f} km" if self.distance_km is not None else "distance unknown"


def _candidates(locations: list[Location], destination: Destination) -> list[Candidate]:
    by_id = {location.location_id: location for location in locations}
    candidates = [
        Candidate(
            location_id,
            haversine_km((location.latitude, location.longitude), destination.point)
            if destination.point is not None
            else None,
        )
        for location_id, location in by_id.items()
    ]
    return sorted(candidates, key=lambda candidate: candidate.rank)


def _available(
    stock: dict[str, list[StockLevel]], location_ids: set[str], skus: set[str]
) -> dict[tuple[str, str], int]:
    """Available units by (location_id, sku), for the given locations and skus only."""
    available: dict[tuple[str, str], int] = {}
    for levels in stock.values():
        for level in levels:
            if level.location_id not in location_ids or level.sku not in skus:
                continue
            key = (level.location_id, level.sku)
            units = max(0, level.available)
            # Two records for one (location, sku) would be a bug upstream: trust the smaller, so the
            # plan never asks for units that may not be there.
            available[key] = min(units, available[key]) if key in available else units
    return available


def _describe_units(units: Counter[str]) -> str:
    items = [f"{sku} x{quantity}" for sku, quantity in units.items()]
    return ", ".join(items) if len(items) <= 5 else ", ".join(items[:5]) + f" and {len(items) - 5} more skus"


def _name_some(location_ids: list[str]) -> str:
    return (
        ", ".join(location_ids)
        if len(location_ids) <= 3
        else ", ".join(location_ids[:3]) + f" and {len(location_ids) - 3} more"
    )


@hookimpl(trylast=True)
def oms_source_order(
    order: Order,
    locations: list[Location],
    stock: dict[str, list[StockLevel]],
    destination: Address,
    rules: SourcingRules | None,
) -> SourcingPlan | None:
    rules = rules or SourcingRules()
    lines = [(line.line_id, line.sku, line.quantity) for line in order.lines if line.quantity > 0]
    wanted: Counter[str] = Counter()
    for _, sku, quantity in lines:
        wanted[sku] += quantity
    if not lines:
        return SourcingPlan(allocations=[], reasons=["the order has no units to source"])
    if not locations:
        return None

    place = locate(destination)
    candidates = _candidates(locations, place)
    available = _available(stock, {candidate.location_id for candidate in candidates}, set(wanted))
    together: Counter[str] = Counter()
    for (_, sku), units in available.items():  # one pass: one per sku was quadratic in a long order
        together[sku] += units
    if any(together[sku] < quantity for sku, quantity in wanted.items()):
        return None  # the eligible locations together lack a sku

    reasons = [place.approximation] if place.approximation else []
    if rules.prefer is Prefer.NEAREST:
        allocations = _nearest_first(lines, candidates, available)
        used = _locations_of(allocations)
        if len(used) == 1:
            ids = [candidate.location_id for candidate in candidates]
            chosen = candidates[ids.index(next(iter(used)))]
            reasons.append(_whole_order_reason(order, chosen, ids[: ids.index(chosen.location_id)]))
            return SourcingPlan(allocations=allocations, reasons=reasons)
        if rules.max_shipments is None or len(used) <= rules.max_shipments:
            reasons.extend(_nearest_reasons(allocations, lines, candidates))
            return SourcingPlan(allocations=allocations, reasons=reasons)
        reasons.append(
            f"taking each unit from the nearest location would ship from {len(used)} locations, more than "
            f"max_shipments ({rules.max_shipments}): the order is sourced from as few locations as possible"
        )
    plan = _fewest(order, lines, wanted, candidates, available, reasons, rules.max_shipments)
    if rules.max_shipments is not None and len(_locations_of(plan.allocations)) > rules.max_shipments:
        return None  # no plan within max_shipments: the order cannot be sourced under these rules
    return plan


def _locations_of(allocations: list[Allocation]) -> set[str]:
    return {allocation.location_id for allocation in allocations}


def _nearest_first(
    lines: list[tuple[str, str, int]], candidates: list[Candidate], available: dict[tuple[str, str], int]
) -> list[Allocation]:
    """Each line from the nearest location that has all of it; a line no single location has
    takes from the nearest ones first. The caller checked that all candidates together cover
    every sku."""
    left = dict(available)
    allocations: list[Allocation] = []
    for line_id, sku, quantity in lines:
        need = quantity
        whole = [c for c in candidates if left.get((c.location_id, sku), 0) >= quantity]
        for candidate in whole[:1] or candidates:  # nearest first
            give = min(need, left.get((candidate.location_id, sku), 0))
            if give <= 0:
                continue
            allocations.append(Allocation(line_id=line_id, location_id=candidate.location_id, quantity=give))
            left[(candidate.location_id, sku)] -= give
            need -= give
            if need == 0:
                break
    return allocations


def _nearest_reasons(
    allocations: list[Allocation], lines: list[tuple[str, str, int]], candidates: list[Candidate]
) -> list[str]:
    sku_of = {line_id: sku for line_id, sku, _ in lines}
    reasons = []
    for candidate in candidates:
        taken: Counter[str] = Counter()
        for allocation in allocations:
            if allocation.location_id == candidate.location_id:
                taken[sku_of[allocation.line_id]] += allocation.quantity
        if taken:
            reasons.append(
                f"{candidate.location_id} supplies {units_text(sum(taken.values()))} ({_describe_units(taken)}): "
                f"the nearest location that has each of these lines ({candidate.distance})"
            )
    return reasons


def _fewest(
    order: Order,
    lines: list[tuple[str, str, int]],
    wanted: Counter[str],
    candidates: list[Candidate],
    available: dict[tuple[str, str], int],
    reasons: list[str],
    max_shipments: int | None,
) -> SourcingPlan:
    lacking: list[str] = []
    for candidate in candidates:
        if all(available.get((candidate.location_id, sku), 0) >= quantity for sku, quantity in wanted.items()):
            reasons.append(_whole_order_reason(order, candidate, lacking))
            return SourcingPlan(
                allocations=[
                    Allocation(line_id=line_id, location_id=candidate.location_id, quantity=quantity)
                    for line_id, _, quantity in lines
                ],
                reasons=reasons,
            )
        lacking.append(candidate.location_id)

    # A location with none of the order is in no smallest group and never taken by the greedy
    # split: counted, the empty stores of a network pushed an order into the greedy split.
    holding = {location_id for (location_id, _), units in available.items() if units > 0}
    candidates = [candidate for candidate in candidates if candidate.location_id in holding]
    if len(candidates) <= EXACT_SEARCH_LIMIT:
        chosen = _fewest_covering(candidates, available, wanted)
        reasons.append(
            f"no single location has the whole order: it is split across the fewest locations that have it "
            f"together ({len(chosen)}: {', '.join(c.location_id for c in chosen)}), the nearest first"
        )
        return SourcingPlan(allocations=_split_nearest_first(lines, chosen, available, reasons), reasons=reasons)
    greedy_reasons: list[str] = []
    allocations = _split(lines, candidates, available, greedy_reasons)
    shipments = len(_locations_of(allocations))
    # The greedy split may take more locations than the fewest: beyond max_shipments that would
    # leave the order unsourced though a group small enough has it, so those groups are searched.
    within = None
    if max_shipments is not None and shipments > max_shipments:
        within = _fewest_covering_within(candidates, available, wanted, max_shipments)
    if within is not None:
        reasons.append(
            f"no single location has the whole order; split greedily it would ship from {shipments} locations, "
            f"more than max_shipments ({max_shipments}): it is split across the fewest locations that have it "
            f"together ({len(within)}: {', '.join(c.location_id for c in within)}), the nearest first"
        )
        return SourcingPlan(allocations=_split_nearest_first(lines, within, available, reasons), reasons=reasons)
    reasons.append(
        "no single location has the whole order: it is split, each time taking all it can from the location "
        "that can supply the most of what is left"
    )
    reasons.extend(greedy_reasons)
    return SourcingPlan(allocations=allocations, reasons=reasons)


EXACT_SEARCH_LIMIT = 12
GROUP_SEARCH_NODES = 1 << EXACT_SEARCH_LIMIT


def _fewest_covering_within(
    candidates: list[Candidate], available: dict[tuple[str, str], int], wanted: Counter[str], most: int
) -> list[Candidate] | None:
    """The smallest set of at most `most` candidates whose stock covers `wanted`, the nearest in
    total distance (then by ids) among sets of that size, as the exact search picks it; None when
    there is none, or when neither search below finds it within its bound. The caller checked that
    no candidate alone has the order."""
    search = _GroupSearch(candidates, available, wanted)
    found = search.smallest_within(most)
    if search.gave_up:
        # Where the branch and bound gives up, the groups are counted as before it: each finds
        # groups the other gives up on (a thousand locations none outholds, or hundreds many do).
        return _fewest_covering_counted(candidates, available, wanted, most)
    return found


def _fewest_covering_counted(
    candidates: list[Candidate], available: dict[tuple[str, str], int], wanted: Counter[str], most: int
) -> list[Candidate] | None:
    """The group _fewest_covering_within picks, among the groups looked at: those of two locations,
    then three, and so on, while all looked at are no more than the exact search's
    2^EXACT_SEARCH_LIMIT; None when none of them covers `wanted`. Sizes are given up one at a time,
    never all at once: a higher `most` looks at every set a lower one looks at. The sets of a size
    are those of the candidates that fewer than that many others outhold (see _outheld_by): counted
    over every candidate, thirty locations holding some of the order were too many for sets of three."""
    skus = [sku for sku, q in wanted.items() if any(available.get((c.location_id, sku), 0) < q for c in candidates)]
    needed = [wanted[sku] for sku in skus]
    stock_of = {c.location_id: [available.get((c.location_id, sku), 0) for sku in skus] for c in candidates}
    outheld_by, reach = _outheld_by(candidates, stock_of, needed, most)
    for size in range(2, reach + 1):
        covering = [
            group
            for group in itertools.combinations([c for c in candidates if outheld_by[c.location_id] < size], size)
            if all(map(operator.ge, map(sum, zip(*(stock_of[c.location_id] for c in group), strict=True)), needed))
        ]
        if covering:
            best = min(covering, key=lambda group: (sum(c.rank[0] for c in group), [c.location_id for c in group]))
            return sorted(best, key=lambda c: c.rank)
    return None


def _outheld_by(
    candidates: list[Candidate], stock_of: dict[str, list[int]], needed: list[int], most: int
) -> tuple[dict[str, int], int]:
    """For each candidate (nearest first), how many others outhold it, counted up to the size
    returned: the largest, up to `most`, whose sets and those of the sizes below, each over the
    candidates that fewer than its size outhold, are no more than 2^EXACT_SEARCH_LIMIT.

    O outholds C when O comes before C (nearer, or as near and first by id) and holds at least as
    much of each sku as C does up to what the order needs. A group of `size` locations with C and
    without O still covers the order with O for C, and is nearer in total (then first by ids): so
    when `size` or more outhold C, one is outside any such group, and C is in none the search picks.
    Nearer must show in the float sum the search compares: a distance shorter by less than the sum's
    rounding error (bounded by n^2 * farthest * 2^-50 for groups of at most n) may sum the same,
    and then the ids decide, where C's may come first; so O counts only when as near or nearer by
    more than that. Outholding is transitive, so a candidate `most` outhold is outheld by `most` of
    those fewer than `most` outhold: only those are compared, and they are few once the sizes the
    search would give up are left out (compared with all before it, each of a thousand locations
    took the search 0.2 s to give up)."""
    slack = len(candidates) ** 2 * max((c.rank[0] for c in candidates), default=0.0) * 2.0**-50
    capped = {location_id: list(map(min, units, needed)) for location_id, units in stock_of.items()}
    outheld_by: dict[str, int] = {}
    kept: Counter[int] = Counter()  # by size: the candidates fewer than that many outhold
    rivals: list[Candidate] = []  # those fewer than `most` outhold, nearest first
    for candidate in candidates:
        mine = capped[candidate.location_id]
        count = 0
        for other in rivals:
            if count == most:
                break
            nearer = other.rank[0] == candidate.rank[0] or candidate.rank[0] - other.rank[0] > slack
            if nearer and all(map(operator.ge, capped[other.location_id], mine)):
                count += 1
        outheld_by[candidate.location_id] = count
        kept.update(range(count + 1, most + 1))
        reach = most
        while most >= 2 and sum(math.comb(kept[size], size) for size in range(2, most + 1)) > 1 << EXACT_SEARCH_LIMIT:
            most -= 1  # the search gives up at this size, whatever the candidates still to come
        if most < reach:
            rivals = [other for other in rivals if outheld_by[other.location_id] < most]
        if count < most:
            rivals.append(candidate)
    return outheld_by, most


class _GaveUp(Exception):
    """The group search took its GROUP_SEARCH_NODES steps without an answer."""


class _GroupSearch:
    """A branch and bound for the group the exact search picks: the fewest locations, then the
    nearest in total, then by ids.

    Sizes are searched smallest first. A group is built one location at a time: the places left
    must hold all that is still short of each sku, so one of them at least its share (what is short
    over the places left); for the sku whose locations holding that share are fewest, each free one
    is taken in turn, in rank order, and left out of the groups tried after it, so that each group
    is met once. A branch ends when the free locations cannot cover what is short (of some sku, or
    of all together: the ones holding the most, as many as there are places left, hold too little),
    or when no group from it can come before the best found: its distance sum is no less than that
    of the group with the nearest free locations in the places left (float sums taken in rank order,
    as the exact search takes them, and a sum of members each as near or nearer, rank by rank, is no
    greater); with every distance the same (unknown distances) the ids decide, in the same way.

    Each location taken into a group is a step. After GROUP_SEARCH_NODES steps, over all sizes, the
    search gives up (no group): set cover is exponential at worst, and some networks no bound here
    sees through (`two_halves` in the tests). The steps of a size never depend on `most`, so a
    higher `most` takes every step a lower one takes and finds every group it finds. Where it gives
    up, the groups are counted as before it (_fewest_covering_counted: up to 4,096, over the
    locations fewer than the size outhold), which finds some it does not (hundreds of stores with a
    unit each); of 92 locations of which none outholds another, that count never reached the groups
    of two, where this search takes three steps."""

    def __init__(
        self, candidates: list[Candidate], available: dict[tuple[str, str], int], wanted: Counter[str]
    ) -> None:
        self.candidates = candidates
        # A sku every candidate has enough of alone is covered by any group.
        skus = [sku for sku, q in wanted.items() if any(available.get((c.location_id, sku), 0) < q for c in candidates)]
        self.needed = [wanted[sku] for sku in skus]
        self.stock = [
            [min(available.get((c.location_id, sku), 0), q) for sku, q in zip(skus, self.needed, strict=True)]
            for c in candidates
        ]
        self.distance = [c.rank[0] for c in candidates]
        self.same_distance = len(set(self.distance)) <= 1
        # By sku: the candidates holding some of it, in rank order.
        self.holders = [[i for i, units in enumerate(self.stock) if units[s] > 0] for s in range(len(skus))]
        # By sku, then in all: what each candidate holds (up to what the order needs), the ones
        # holding some in order of it, most first, and those amounts, least first.
        self.held = [[units[s] for units in self.stock] for s in range(len(skus))] + [list(map(sum, self.stock))]
        self.most_first = [
            sorted((i for i, units in enumerate(held) if units), key=lambda i, held=held: -held[i])
            for held in self.held
        ]
        self.least_first = [sorted(units for units in held if units) for held in self.held]
        self.free = [True] * len(candidates)  # neither in the group being built nor left out of it
        self.nodes = 0
        self.gave_up = False
        self.best: tuple[float, list[str]] | None = None
        self.best_group: list[int] = []

    def smallest_within(self, most: int) -> list[Candidate] | None:
        try:
            for size in range(2, min(most, len(self.candidates)) + 1):
                self._extend([], self.needed, size)
                if self.best is not None:
                    return [self.candidates[i] for i in self.best_group]
        except _GaveUp:
            self.gave_up = True
        return None

    def _extend(self, group: list[int], short: list[int], places: int) -> None:
        shorts = [s for s, units in enumerate(short) if units > 0]
        if not shorts:
            if not places:
                self._met(sorted(group))
            return
        if not places or not self._within_reach(short, places):
            return
        # The places left hold all that is short of each sku, so one of them at least its share.
        share = [-(-short[s] // places) for s in range(len(short))]
        sku = min(shorts, key=lambda s: self._holding(s, share[s]))
        left_out = []
        for i in self.holders[sku]:
            if not self.free[i] or self.stock[i][sku] < share[sku]:
                continue
            # Each group from here on is, rank by rank, as far as this bound or farther.
            if self._beyond_best([*group, i], places - 1):
                break
            if self.nodes == GROUP_SEARCH_NODES:
                raise _GaveUp
            self.nodes += 1
            self.free[i] = False
            left_out.append(i)
            self._extend([*group, i], list(map(_short_of, short, self.stock[i])), places - 1)
        for i in left_out:
            self.free[i] = True

    def _holding(self, sku: int, units: int) -> int:
        """How many candidates, free or not, hold at least `units` of the sku: which sku to branch
        on only speeds the search (any sku short would find the same group)."""
        return len(self.least_first[sku]) - bisect.bisect_left(self.least_first[sku], units)

    def _within_reach(self, short: list[int], places: int) -> bool:
        """Whether the free candidates holding the most, as many as there are places, have enough
        of each sku short, and as many units as are short in all (counted up to what the order needs)."""
        return all(self._most_held(s, units, places) for s, units in enumerate(short) if units > 0) and self._most_held(
            len(short), sum(short), places
        )

    def _most_held(self, s: int, short: int, places: int) -> bool:
        held = self.held[s]
        for i in self.most_first[s]:
            if self.free[i]:
                short -= held[i]
                places -= 1
                if short <= 0:
                    return True
                if not places:
                    return False
        return False

    def _beyond_best(self, group: list[int], more: int) -> bool:
        """Whether every group of `group` and `more` others comes after the best found: the nearest
        others (those left out of it too, which only weakens the bound and never scans past them)
        make the nearest such group, rank by rank."""
        if self.best is None:
            return False
        others = itertools.islice((j for j in range(len(self.candidates)) if j not in group), more)
        nearest = sorted([*group, *others])
        total = sum(self.distance[j] for j in nearest)
        if total != self.best[0] or not self.same_distance:
            return total > self.best[0]
        return [self.candidates[j].location_id for j in nearest] > self.best[1]

    def _met(self, group: list[int]) -> None:
        key = (sum(self.distance[i] for i in group), [self.candidates[i].location_id for i in group])
        if self.best is None or key < self.best:
            self.best, self.best_group = key, group


def _short_of(short: int, units: int) -> int:
    return max(0, short - units)


def _fewest_covering(
    candidates: list[Candidate], available: dict[tuple[str, str], int], wanted: Counter[str]
) -> list[Candidate]:
    """The smallest set of candidates whose stock covers `wanted`; among sets of that size, the
    nearest in total distance (then by ids). The caller checked that all of them together cover it.
    Each group's stock is that of the group without its first member plus that member's, one
    addition per group and sku: summed member by member for every sku of every group, a long
    order over EXACT_SEARCH_LIMIT locations took half a second. A sku every candidate has enough
    of alone is covered by any group, so only the others are summed."""
    skus = [sku for sku, q in wanted.items() if any(available.get((c.location_id, sku), 0) < q for c in candidates)]
    needed = [wanted[sku] for sku in skus]
    stock_of = [[available.get((c.location_id, sku), 0) for sku in skus] for c in candidates]
    groups = 1 << len(candidates)
    stock: list[list[int]] = [[0] * len(skus)] * groups
    by_size: dict[int, list[int]] = {}
    for group in range(1, groups):
        first = group & -group
        stock[group] = list(map(operator.add, stock[group ^ first], stock_of[first.bit_length() - 1]))
        if all(map(operator.ge, stock[group], needed)):
            by_size.setdefault(group.bit_count(), []).append(group)
    for size in range(2, len(candidates) + 1):
        covering = [[c for i, c in enumerate(candidates) if group >> i & 1] for group in by_size.get(size, [])]
        if covering:
            best = min(covering, key=lambda group: (sum(c.rank[0] for c in group), [c.location_id for c in group]))
            return sorted(best, key=lambda c: c.rank)
    return list(candidates)


def _split_nearest_first(
    lines: list[tuple[str, str, int]],
    chosen: list[Candidate],
    available: dict[tuple[str, str], int],
    reasons: list[str],
) -> list[Allocation]:
    left = dict(available)
    allocations: list[Allocation] = []
    given: Counter[str] = Counter()  # by line: summed over the allocations for each line, it was cubic
    for candidate in chosen:  # nearest first
        taken: Counter[str] = Counter()
        for line_id, sku, quantity in lines:
            give = min(quantity - given[line_id], left.get((candidate.location_id, sku), 0))
            if give <= 0:
                continue
            allocations.append(Allocation(line_id=line_id, location_id=candidate.location_id, quantity=give))
            left[(candidate.location_id, sku)] -= give
            given[line_id] += give
            taken[sku] += give
        if taken:
            reasons.append(
                f"{candidate.location_id} supplies {units_text(sum(taken.values()))} ({_describe_units(taken)}) "
                f"({candidate.distance})"
            )
    return allocations


def _whole_order_reason(order: Order, chosen: Candidate, nearer_lacking: list[str]) -> str:
    if order.fulfillment.type == "pickup" and order.fulfillment.location_id == chosen.location_id:
        return f"{chosen.location_id} supplies every line: it is the pickup store"
    if chosen.distance_km is None:
        return (
            f"{chosen.location_id} supplies every line: the first location, by id, that has the whole order "
            "(distance unknown)"
        )
    verb = "lacks" if len(nearer_lacking) == 1 else "lack"
    skipped = f"; nearer {_name_some(nearer_lacking)} {verb} part of it" if nearer_lacking else ""
    return (
        f"{chosen.location_id} supplies every line: the nearest location that has the whole order "
        f"({chosen.distance}{skipped})"
    )


def _split(
    lines: list[tuple[str, str, int]],
    candidates: list[Candidate],
    available: dict[tuple[str, str], int],
    reasons: list[str],
) -> list[Allocation]:
    """Greedy: the location that can give the most remaining units goes first. Assumes the stock of
    all candidates together covers the order (checked by the caller), so it always completes."""
    remaining = {line_id: quantity for line_id, _, quantity in lines}
    sku_of = {line_id: sku for line_id, sku, _ in lines}
    left = dict(available)
    # Each location is asked only about the skus of the order it holds: asked about every sku still
    # needed, each round over a network of a thousand locations cost a second for a long order.
    skus_at: dict[str, list[str]] = {}
    for location_id, sku in available:
        skus_at.setdefault(location_id, []).append(sku)
    unused = list(candidates)  # nearest first, so the first of equal supplies is the nearest
    allocations: list[Allocation] = []
    while any(remaining.values()):
        needed: Counter[str] = Counter()
        for line_id, quantity in remaining.items():
            needed[sku_of[line_id]] += quantity
        supplies = [
            sum(min(needed[sku], left[(candidate.location_id, sku)]) for sku in skus_at.get(candidate.location_id, ()))
            for candidate in unused
        ]
        most = max(supplies)
        if most == 0:  # cannot happen after the caller's check; never loop forever if it does
            raise AssertionError("sourcing split ran out of stock after the stock check passed")
        ties = supplies.count(most)
        chosen = unused.pop(supplies.index(most))
        taken: Counter[str] = Counter()
        for line_id, sku, _ in lines:
            quantity = min(remaining[line_id], left.get((chosen.location_id, sku), 0))
            if quantity == 0:
                continue
            allocations.append(Allocation(line_id=line_id, location_id=chosen.location_id, quantity=quantity))
            remaining[line_id] -= quantity
            left[(chosen.location_id, sku)] -= quantity
            taken[sku] += quantity
        reasons.append(_split_reason(chosen, taken, sum(needed.values()), ties))
    return allocations


def _split_reason(chosen: Candidate, taken: Counter[str], remaining_units: int, ties: int) -> str:
    units = sum(taken.values())
    how = "the rest of the order" if units == remaining_units else "the most of the remaining units any location could"
    if ties > 1:
        tie_break = "the nearest" if chosen.distance_km is not None else "the first by id"
        how += f", and {tie_break} of the {ties} locations that could supply as many"
    return (
        f"{chosen.location_id} supplies {units} of the {remaining_units} remaining units "
        f"({_describe_units(taken)}): {how} ({chosen.distance})"
    )
