"""Reorder points and purchase orders under a hypothesis state machine, on moto with the real stream.

Stock falls and rises (reservations, releases, adjustments, stock takes), purchase orders are
opened by hand (one sku or both), submitted, received in part and cancelled, reorder points are
set, changed (another vendor, another point) and cleared, and the Inventory stream's records reach
the BackorderFunction's handler through the template's filters: delivered once, delivered again
(a batch redelivered), or an earlier batch replayed by hand (the failure runbook). No order
waits, so only crossings buy. After every step:
- `incoming` at each (sku, location) is the units its open purchase orders have not received, and
  `next_expected_at` the earliest `expected_at` of those still bringing the sku;
- the drafts at a location hold at most `point + reorder_quantity - 1` units of a sku (the highest
  point and quantity it has had): a crossing buys only while the stock position with the drafts
  (available, incoming, drafted) is below the point, so a crossing bought twice (a record
  redelivered or replayed, two records of one fall, a vendor changed) shows as more.

`make test` runs `in_make_test(3, 30)`; `make fuzz` runs the `fuzz` twin at length:
    OMS_STATEFUL_EXAMPLES=100 OMS_STATEFUL_STEPS=50 \
        .venv/bin/python -m pytest -m fuzz tests/integration/test_reorder_stateful.py -p no:warnings
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any, ClassVar

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from core.ids import reservation_key
from core.models import ReorderSettings, StockLevel
from core.purchasing import (
    INCOMING,
    NewPurchaseOrder,
    PurchaseOrder,
    PurchaseOrderFilter,
    Receipt,
    Submission,
    VendorRequest,
)
from core.status import PurchaseOrderStatus
from tests.builders import location, product
from tests.integration.test_reorder_points import COST, Buyer, buyer, only_granted_calls  # noqa: F401 (fixtures)
from tests.stateful import at_length, in_make_test

PO = PurchaseOrderStatus
LOCATIONS = ["wh-east", "wh-west"]
VENDORS = ["acme", "zeta"]

locations = st.sampled_from(LOCATIONS)
vendors = st.sampled_from(VENDORS)
picks = st.integers(min_value=0, max_value=10_000)  # an index into what exists, modulo its length
# After a change: 0 keeps its records for a later delivery (a batch of several), 1 delivers them,
# 2 delivers them twice (the batch redelivered).
thens = st.integers(min_value=0, max_value=2)


class ReorderMachine(RuleBasedStateMachine):
    """Fresh skus per example in the one test's account: `buyer` is set by the test that runs it."""

    buyer: ClassVar[Buyer | None] = None
    _examples = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        assert self.buyer is not None
        self.container = self.buyer.container
        example = next(self._examples)
        self.skus = [f"RS{example}-A", f"RS{example}-B"]
        for sku in self.skus:
            self.container.catalog_repository.put_product(product(sku, "9.00"))
        self.held: list[tuple[str, str, str]] = []  # (sku, location, reservation key)
        self.batches: list[list[dict[str, Any]]] = []  # the stream's batches delivered, for replays
        # The highest point and reorder quantity each (sku, location) has had: what bounds its drafts.
        self.highest: dict[tuple[str, str], tuple[int, int]] = defaultdict(lambda: (0, 0))
        self.reservations = itertools.count()
        # Every (sku, location) starts stocked above a point, so that the steps cross it often.
        for sku, location_id in itertools.product(self.skus, LOCATIONS):
            self.container.inventory_repository.set_on_hand(sku, location_id, 10, reason="stock_take")
            self.set_point(self.skus.index(sku), location_id, 5, 10, "acme")

    # --- Stock ------------------------------------------------------------------------------------

    def _available(self, sku: str, location_id: str) -> int:
        levels = self.container.inventory_repository.levels({sku}, [location_id])[sku]
        return levels[0].available if levels else 0

    @rule(sku=st.integers(0, 1), location_id=locations, share=st.integers(1, 100), then=thens)
    def reserve(self, sku: int, location_id: str, share: int, then: int) -> None:
        """`share` percent of what is available (at least one unit)."""
        available = self._available(self.skus[sku], location_id)
        units = max(1, available * share // 100)
        if available < units:
            return
        key = reservation_key(f"ord_{next(self.reservations):024d}", "l1")
        self.container.inventory_repository.reserve(self.skus[sku], location_id, key, units)
        self.held.append((self.skus[sku], location_id, key))
        self.deliver(then)

    @precondition(lambda self: self.held)
    @rule(pick=picks, then=thens)
    def release(self, pick: int, then: int) -> None:
        sku, location_id, key = self.held.pop(pick % len(self.held))
        self.container.inventory_repository.release(sku, location_id, key)
        self.deliver(then)

    @rule(sku=st.integers(0, 1), location_id=locations, delta=st.integers(-5, 8).filter(bool), then=thens)
    def adjust(self, sku: int, location_id: str, delta: int, then: int) -> None:
        if delta < 0 and self._available(self.skus[sku], location_id) < -delta:
            return
        self.container.inventory_repository.adjust(self.skus[sku], location_id, delta, reason="cycle count")
        self.deliver(then)

    @rule(sku=st.integers(0, 1), location_id=locations, beyond_reserved=st.integers(0, 12), then=thens)
    def count(self, sku: int, location_id: str, beyond_reserved: int, then: int) -> None:
        levels = self.container.inventory_repository.levels({self.skus[sku]}, [location_id])[self.skus[sku]]
        reserved = levels[0].reserved if levels else 0
        self.container.inventory.count(self.skus[sku], location_id, reserved + beyond_reserved)
        self.deliver(then)

    # --- Purchase orders ----------------------------------------------------------------------------

    @rule(location_id=locations, vendor_id=vendors, both=st.booleans(), quantity=st.integers(1, 10))
    def open_purchase_order(self, location_id: str, vendor_id: str, both: bool, quantity: int) -> None:
        lines = [{"sku": sku, "quantity": quantity, "unit_cost": COST.model_dump(mode="json")}
                 for sku in (self.skus if both else self.skus[:1])]  # fmt: skip
        body = {"vendor_id": vendor_id, "location_id": location_id, "lines": lines}
        self.container.purchasing.create(NewPurchaseOrder.model_validate(body))

    def _ours(self) -> list[PurchaseOrder]:
        """Every PO of this example's skus, drafts included (a crossing makes them)."""
        found, cursor = [], None
        while True:
            page, cursor = self.container.purchasing.list(PurchaseOrderFilter(), 100, cursor)
            found += [po for po in page if any(line.sku in self.skus for line in po.lines)]
            if cursor is None:
                return found

    def _pick(self, pick: int, status: frozenset[PurchaseOrderStatus]) -> PurchaseOrder | None:
        candidates = [po for po in self._ours() if po.status in status]
        return candidates[pick % len(candidates)] if candidates else None

    @rule(pick=picks)
    def submit_draft(self, pick: int) -> None:
        draft = self._pick(pick, frozenset({PO.DRAFT}))
        if draft is not None:
            prices = {"lines": [{"sku": line.sku, "unit_cost": COST.model_dump(mode="json")} for line in draft.lines]}
            assert self.container.purchasing.submit(draft.id, Submission.model_validate(prices)).status is PO.OPEN

    @rule(pick=picks, then=thens)
    def cancel(self, pick: int, then: int) -> None:
        po = self._pick(pick, frozenset({PO.DRAFT, PO.OPEN, PO.PARTIALLY_RECEIVED}))
        if po is not None:
            assert self.container.purchasing.cancel(po.id).status is PO.CANCELLED
        self.deliver(then)

    @rule(pick=picks, shares=st.lists(st.integers(0, 100), min_size=2, max_size=2), times=st.integers(1, 2),
          then=thens)  # fmt: skip
    def receive(self, pick: int, shares: list[int], times: int, then: int) -> None:
        po = self._pick(pick, frozenset({PO.OPEN, PO.PARTIALLY_RECEIVED}))
        if po is None:
            return
        lines = [{"sku": line.sku, "quantity": max(1, line.outstanding * share // 100)}
                 for line, share in zip(po.lines, shares, strict=False) if line.outstanding]  # fmt: skip
        receipt = Receipt.model_validate({"lines": lines})
        key = f"receipt-{po.id}-v{po.version}"
        for _ in range(times):  # 2: sent again under its key, as a retrying client would
            self.container.purchasing.receive(po.id, receipt, key)
        self.deliver(then)

    # --- Reorder points ---------------------------------------------------------------------------------

    @rule(sku=st.integers(0, 1), location_id=locations, point=st.integers(2, 8), quantity=st.integers(3, 20),
          vendor_id=vendors)  # fmt: skip
    def set_point(self, sku: int, location_id: str, point: int, quantity: int, vendor_id: str) -> None:
        settings = ReorderSettings(reorder_point=point, reorder_quantity=quantity, vendor_id=vendor_id, unit_cost=COST)
        self.container.purchasing_repository.set_reorder(self.skus[sku], location_id, settings)
        highest = self.highest[(self.skus[sku], location_id)]
        self.highest[(self.skus[sku], location_id)] = (max(highest[0], point), max(highest[1], quantity))

    @rule(sku=st.integers(0, 1), location_id=locations)
    def clear_point(self, sku: int, location_id: str) -> None:
        self.container.purchasing_repository.set_reorder(self.skus[sku], location_id, None)

    # --- The stream -----------------------------------------------------------------------------------

    @rule(times=st.integers(1, 2))
    def deliver(self, times: int) -> None:
        """The records since the last delivery, `times` times (2: the batch redelivered; 0: kept)."""
        records = self.buyer.stream.records() if times else []
        if records:
            for _ in range(times):
                assert self.buyer.consume(records) == {"batchItemFailures": []}
            self.batches.append(records)

    @precondition(lambda self: self.batches)
    @rule(pick=picks)
    def replay(self, pick: int) -> None:
        assert self.buyer.consume(self.batches[pick % len(self.batches)]) == {"batchItemFailures": []}

    # --- What must hold -------------------------------------------------------------------------------

    @invariant()
    def the_purchase_orders_agree_with_the_stock_levels(self) -> None:
        """Each check below, over one read of this example's purchase orders and stock levels: nothing
        changes them while they are checked, and each read is every PO's page and a Query of both
        skus' levels (read again by each check, three reads of the POs and two of the levels after
        every step were half the test's time under cProfile)."""
        ours = self._ours()
        levels = self.container.inventory_repository.levels(set(self.skus))
        self.incoming_is_what_open_purchase_orders_have_not_received(ours, levels)
        self.next_expected_at_is_the_earliest_open_purchase_order_still_bringing_the_sku(ours, levels)
        self.no_crossing_is_bought_twice(ours)

    def incoming_is_what_open_purchase_orders_have_not_received(
        self, ours: list[PurchaseOrder], levels: dict[str, list[StockLevel]]
    ) -> None:
        for sku in self.skus:
            for level in levels[sku]:
                on_order = [po for po in ours if po.location_id == level.location_id and po.status in INCOMING]
                due = sum(line.outstanding for po in on_order for line in po.lines if line.sku == sku)
                assert level.incoming == due, (sku, level)

    def next_expected_at_is_the_earliest_open_purchase_order_still_bringing_the_sku(
        self, ours: list[PurchaseOrder], levels: dict[str, list[StockLevel]]
    ) -> None:
        # A PO partly received keeps its date only for the skus it still brings; a draft brings none.
        for sku in self.skus:
            for level in levels[sku]:
                dates = [po.expected_at for po in ours
                         if po.location_id == level.location_id and po.status in INCOMING
                         and any(line.sku == sku and line.outstanding for line in po.lines)]  # fmt: skip
                assert level.next_expected_at == min(dates, default=None), (sku, level)

    def no_crossing_is_bought_twice(self, ours: list[PurchaseOrder]) -> None:
        drafted: dict[tuple[str, str], int] = defaultdict(int)
        for po in ours:
            if po.status is PO.DRAFT:
                # A draft is the vendor's at the location, whichever skus it buys: those of an
                # earlier example may share it.
                for line in po.lines:
                    if line.sku in self.skus:
                        drafted[(line.sku, po.location_id)] += line.quantity
        for (sku, location_id), units in drafted.items():
            point, quantity = self.highest[(sku, location_id)]
            assert units <= point + quantity - 1, (sku, location_id, units, point, quantity)


@pytest.fixture
def machine(buyer: Buyer) -> type[ReorderMachine]:  # noqa: F811
    buyer.container.catalog_repository.put_location(location("wh-west", name="West", latitude=39.53, longitude=-119.81))
    buyer.container.purchasing.put_vendor("zeta", VendorRequest(name="Zeta", lead_time_days=3))
    return type("Reorders", (ReorderMachine,), {"buyer": buyer})


def test_reorder_points_buy_each_crossing_once_and_incoming_follows_the_purchase_orders(machine):
    run_state_machine_as_test(machine, settings=in_make_test(3, 30))


@pytest.mark.fuzz
def test_reorder_points_buy_each_crossing_once_and_incoming_follows_the_purchase_orders_at_length(machine):
    run_state_machine_as_test(machine, settings=at_length(100, 40))
