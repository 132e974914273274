"""A warm container's short-lived cache of catalog reads (products and the location network).

Capture reads every ordered product and the whole network for each order, while both change
rarely. Caching them for a few seconds per container takes two of the four DynamoDB reads off
each order. Stock is never cached: availability is always read fresh. Writes made through this
container update the cache at once; other containers see a change within `ttl_seconds`, and a
product or location they have not got is read again every time it is asked for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from core.models import Location, Product
from core.ports import CatalogRepository, SourcingRulesRepository, WaitingOrder
from core.sourcing_rules import SourcingRules

_FIRST_PURGE = 1024  # products cached before stale ones are first looked for


class CachedCatalog(CatalogRepository):
    def __init__(self, inner: CatalogRepository, ttl_seconds: float, clock: Callable[[], float] = time.monotonic):
        self._inner = inner
        self._ttl = ttl_seconds
        self._clock = clock
        self._products: dict[str, tuple[float, Product]] = {}
        self._purge_at = _FIRST_PURGE
        # The local runtime runs batches of one function side by side over one warm container:
        # a run caching products while another goes through them to let stale ones go would break
        # that pass ("dictionary changed size during iteration"). Reads look up without it.
        self._products_lock = threading.Lock()
        self._network: tuple[float, list[Location]] | None = None

    def _fresh(self, stored_at: float) -> bool:
        return self._clock() - stored_at < self._ttl

    # Products: only found products are cached, so a new sku is visible at once everywhere.
    def get_products(self, skus: set[str]) -> dict[str, Product]:
        found = {sku: hit[1] for sku in skus if (hit := self._products.get(sku)) and self._fresh(hit[0])}
        missing = skus - found.keys()
        if missing:
            fetched = self._inner.get_products(missing)
            now = self._clock()
            with self._products_lock:
                self._products.update({sku: (now, product) for sku, product in fetched.items()})
                self._let_go_of_stale(now)
            found.update(fetched)
        return found

    def _let_go_of_stale(self, now: float) -> None:
        # Called holding _products_lock. A warm container lives for hours and reads a few skus an
        # order: kept for good, a large catalog's products would fill its memory. Stale ones are
        # dropped whenever the cache has doubled since the last pass, so each read pays a constant
        # share of the passes.
        if len(self._products) < self._purge_at:
            return
        self._products = {sku: hit for sku, hit in self._products.items() if now - hit[0] < self._ttl}
        self._purge_at = max(_FIRST_PURGE, 2 * len(self._products))

    def get_product(self, sku: str) -> Product | None:
        return self.get_products({sku}).get(sku)

    def put_product(self, product: Product) -> bool:
        created = self._inner.put_product(product)
        now = self._clock()
        with self._products_lock:
            self._products[product.sku] = (now, product)
            self._let_go_of_stale(now)  # a catalog sync puts every product through one container
        return created

    # The network is read whole, so it is cached whole.
    def list_locations(self) -> list[Location]:
        # Read once: another run in this container (a queue's batches side by side) may drop it meanwhile.
        network = self._network
        if network is None or not self._fresh(network[0]):
            network = self._network = (self._clock(), self._inner.list_locations())
        return list(network[1])

    def get_location(self, location_id: str) -> Location | None:
        # Absence is not cached either: a location opened through another container a moment ago
        # (PUT /locations, then stock put there) is read again, never "no location" for seconds.
        network = self._network  # read once, as list_locations() does
        read_now = network is None or not self._fresh(network[0])
        found = _named(self.list_locations(), location_id)
        if found is None and not read_now:
            self._network = None
            found = _named(self.list_locations(), location_id)
        return found

    def put_location(self, location: Location) -> bool:
        created = self._inner.put_location(location)
        self._network = None
        return created

    def wake_from(self, after: WaitingOrder) -> None:
        self._inner.wake_from(after)


def _named(locations: list[Location], location_id: str) -> Location | None:
    return next((loc for loc in locations if loc.location_id == location_id), None)


class CachedSourcingRules:
    """The sourcing rules in force, as capture's stock check reads them: one Query per container
    every `ttl_seconds` instead of one per order. Allocation reads them fresh (a rules change
    applies to the next order allocated); capture may count under rules up to `ttl_seconds` old,
    the same staleness as its products and network, except for rules this container wrote or
    answered as in force (`hold`), which count at once, as its catalog writes do."""

    def __init__(
        self, inner: SourcingRulesRepository, ttl_seconds: float, clock: Callable[[], float] = time.monotonic
    ):  # fmt: skip
        self._inner = inner
        self._ttl = ttl_seconds
        self._clock = clock
        self._held: tuple[float, SourcingRules] | None = None

    def current(self) -> SourcingRules:
        if self._held is None or self._clock() - self._held[0] >= self._ttl:
            self._held = (self._clock(), self._inner.current())
        return self._held[1]

    def hold(self, rules: SourcingRules) -> None:
        """`rules` are in force (this container's PUT /sourcing/rules wrote or answered them),
        unless it holds a later version already."""
        if self._held is None or rules.version >= self._held[1].version:
            self._held = (self._clock(), rules)
