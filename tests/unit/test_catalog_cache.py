"""The per-container catalog cache: fresh for ttl seconds, write-through, never caches absence."""

import threading

from core import hookimpl
from core.money import Money
from core.pricing import Pricing
from functions.adapters.catalog_cache import CachedCatalog
from functions.plugin_loading import load_plugin_manager
from tests.builders import location, product
from tests.fakes import FakeCatalog
from tests.unit.conftest import an_address, an_order


class CountingCatalog(FakeCatalog):
    def __init__(self):
        super().__init__()
        self.reads = 0

    def get_products(self, skus):
        self.reads += 1
        return super().get_products(skus)

    def list_locations(self):
        self.reads += 1
        return super().list_locations()


def make(ttl=10.0):
    now = [0.0]
    inner = CountingCatalog()
    return CachedCatalog(inner, ttl, clock=lambda: now[0]), inner, now


def test_products_are_read_once_within_the_ttl_and_again_after():
    cache, inner, now = make()
    inner.put_product(product("A", "1.00"))
    assert cache.get_products({"A"})["A"].price.amount == 1
    inner.put_product(product("A", "2.00"))  # changed by another container
    assert cache.get_products({"A"})["A"].price.amount == 1
    assert inner.reads == 1
    now[0] = 10.0
    assert cache.get_products({"A"})["A"].price.amount == 2
    assert inner.reads == 2


def test_a_write_through_this_container_is_seen_at_once():
    cache, _, _ = make()
    cache.put_product(product("A", "1.00"))
    cache.get_products({"A"})
    cache.put_product(product("A", "3.00"))
    assert cache.get_product("A").price.amount == 3


def test_a_missing_sku_is_asked_for_every_time():
    cache, inner, _ = make()
    assert cache.get_products({"NEW"}) == {}
    inner.put_product(product("NEW"))
    assert "NEW" in cache.get_products({"NEW"})


def test_the_network_is_cached_whole_and_dropped_on_write():
    cache, inner, _ = make()
    cache.put_location(location("wh-east"))
    assert [loc.location_id for loc in cache.list_locations()] == ["wh-east"]
    assert cache.get_location("wh-east") is not None
    assert inner.reads == 1
    cache.put_location(location("wh-west"))
    assert cache.get_location("wh-west") is not None
    assert inner.reads == 2


def test_a_location_made_by_another_container_is_found_at_once_though_the_network_is_cached():
    # PUT /locations then PUT /inventory for it, answered by two containers: the second one's
    # cached network (read a moment before) must not make the new location a 404 for seconds.
    cache, inner, _ = make()
    inner.put_location(location("wh-east"))
    assert [loc.location_id for loc in cache.list_locations()] == ["wh-east"]
    inner.put_location(location("wh-west"))  # by another container

    assert cache.get_location("wh-west") is not None
    assert cache.get_location("wh-nowhere") is None
    assert cache.get_location("wh-east") is not None
    assert inner.reads == 3  # a hit is still served from the cache; each miss reads again


class CheapensTheProduct:
    @hookimpl(tryfirst=True)
    def oms_unit_price(self, product):
        product.price = Money.of("0.01", product.price.currency)  # assignment is not validated
        return None


def test_a_plugin_that_changes_a_product_does_not_poison_the_cache():
    cache, inner, _ = make()
    inner.put_product(product("A", "1.00"))
    pricing = Pricing(load_plugin_manager(CheapensTheProduct()))

    pricing.price(an_order(("A", 1)), cache.get_products({"A"}), an_address())

    assert cache.get_products({"A"})["A"].price == Money.of("1.00", "USD")
    assert inner.reads == 1  # the cached product itself was checked, not a fresh read


def test_the_sourcing_rules_are_read_once_within_the_ttl_and_again_after():
    from core.sourcing_rules import SourcingRules
    from functions.adapters.catalog_cache import CachedSourcingRules

    class Rules:
        def __init__(self):
            self.reads, self.version = 0, 1

        def current(self):
            self.reads += 1
            return SourcingRules(version=self.version)

    now, inner = [0.0], Rules()
    cached = CachedSourcingRules(inner, 10.0, clock=lambda: now[0])
    assert cached.current().version == 1
    inner.version = 2  # a PUT /sourcing/rules on another container
    now[0] = 9.9
    assert cached.current().version == 1
    now[0] = 10.0
    assert cached.current().version == 2
    assert inner.reads == 2


def test_sourcing_rules_this_container_answered_are_held_at_once_but_never_over_a_later_version():
    from core.sourcing_rules import SourcingRules
    from functions.adapters.catalog_cache import CachedSourcingRules

    class Rules:
        reads = 0

        def current(self):
            self.reads += 1
            return SourcingRules(version=3)

    now, inner = [0.0], Rules()
    cached = CachedSourcingRules(inner, 10.0, clock=lambda: now[0])
    assert cached.current().version == 3
    cached.hold(SourcingRules(version=4))  # this container's PUT /sourcing/rules wrote version 4
    assert cached.current().version == 4
    cached.hold(SourcingRules(version=2))  # an answer older than what is held changes nothing
    assert cached.current().version == 4
    now[0] = 10.0  # held for the ttl from the PUT, then read again
    assert cached.current().version == 3 and inner.reads == 2


def test_products_no_longer_fresh_are_let_go_so_a_warm_container_does_not_grow_with_the_catalog():
    # A container lives for hours: holding every product it ever read (a large catalog, read a few
    # skus an order) grows its memory until the function runs out of it and its requests fail.
    cache, inner, now = make()
    skus = [f"SKU-{n}" for n in range(5_000)]
    for sku in skus:
        inner.put_product(product(sku))

    for sku in skus:
        cache.get_products({sku})
        now[0] += 1.0  # one a second: at most ten are fresh at a time

    assert len(cache._products) < 2_000
    assert cache.get_product(skus[-1]) is not None and inner.reads == len(skus)  # the fresh one still cached


def test_products_put_through_a_container_are_let_go_once_stale_too():
    cache, _, now = make()

    for n in range(5_000):
        cache.put_product(product(f"SKU-{n}"))  # a catalog sync through one container
        now[0] += 1.0

    assert len(cache._products) < 2_000


def test_the_network_read_by_one_run_while_another_drops_it_is_still_answered():
    # The import worker's and webhook delivery's mappings run batches side by side over one warm
    # container (locally, threads over one module): another run's get_location of a location the
    # cached network lacks drops it (`_network = None`) between this read's look and its answer.
    inner = CountingCatalog()
    inner.put_location(location("L1"))
    calls = [0]
    cache: CachedCatalog

    def clock() -> float:
        calls[0] += 1
        if calls[0] == 2:  # this read's freshness look at the cached network: the other run drops it here
            cache._network = None
        return 0.0

    cache = CachedCatalog(inner, 10.0, clock=clock)
    assert [loc.location_id for loc in cache.list_locations()] == ["L1"]  # read and cached (clock call 1)
    assert [loc.location_id for loc in cache.list_locations()] == ["L1"]  # cached; dropped as it is looked at
    assert inner.reads == 1


def test_a_run_caching_a_product_while_another_lets_stale_ones_go_breaks_neither():
    # The local runtime runs up to four batches of one function side by side over one warm
    # container's cache (threads over one module). Past the first purge's 1,024 products, one run
    # cached a product while another was going through the products to drop stale ones: the
    # purge raised "dictionary changed size during iteration", failing that run's order.
    cache, inner, now = make()
    for n in range(1_023):
        cache.put_product(product(f"SKU-{n}"))
    inner.put_product(product("PURGING"))
    inner.put_product(product("OTHER"))
    now[0] = 100.0  # every product cached so far is stale
    paused, resume, tried = threading.Event(), threading.Event(), threading.Event()
    purging = threading.current_thread()  # replaced below, before the purge starts

    class PausingProducts(dict):
        # The purge stops after its first product, as the interpreter may switch threads there.
        def items(self):
            for n, item in enumerate(super().items()):
                if n == 1 and threading.current_thread() is purging:
                    paused.set()
                    resume.wait(10)
                yield item

    class NotingLock:
        # The other run's wait for the cache is noted, so the purge resumes only once that run
        # has either cached its product or is waiting to.
        def __init__(self):
            self._lock = threading.Lock()

        def __enter__(self):
            if threading.current_thread() is other:
                tried.set()
            self._lock.acquire()

        def __exit__(self, *exc_info):
            self._lock.release()

    cache._products = PausingProducts(cache._products)
    cache._products_lock = NotingLock()
    raised: list[BaseException] = []

    def run(skus):
        try:
            cache.get_products(skus)
        except BaseException as error:
            raised.append(error)
        finally:
            tried.set()

    purging = threading.Thread(target=run, args=({"PURGING"},))  # its product makes 1,024: the purge
    other = threading.Thread(target=run, args=({"OTHER"},))
    purging.start()
    assert paused.wait(10)
    other.start()
    tried.wait(10)
    resume.set()
    purging.join(10)
    other.join(10)

    assert raised == []
    assert set(cache.get_products({"PURGING", "OTHER"})) == {"PURGING", "OTHER"}
    assert inner.reads == 2  # both runs' products stay cached: neither is read again
