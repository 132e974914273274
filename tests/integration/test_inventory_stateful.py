"""The real DynamoInventory under moto, driven by a hypothesis state machine against a model in Python.

Stock takes, adjustments, reservations, rearrangements, releases and shipments run in random order (each of the
keyed ones possibly twice, as a retried step would) on a few items, and after every step the
table must agree with the model: 0 <= reserved <= on_hand, available == on_hand - reserved,
reserved == the sum of the reservations held on the item, and no unit created or lost
(on_hand == last count + adjustments since - units shipped since). InsufficientStock must be
raised exactly when the model says there is not enough.

`make test` runs 6 examples of 25 steps, derandomized: the same steps on every run and machine (a
failure there is reproduced by running it again, and the suite's time is bounded). `make fuzz`
runs its `fuzz`-marked twin: random examples, a new run each time, 300 examples of 50 steps by
default; to search longer:
    OMS_STATEFUL_EXAMPLES=1000 OMS_STATEFUL_STEPS=60 \
        .venv/bin/python -m pytest -m fuzz tests/integration/test_inventory_stateful.py -p no:warnings
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from core.errors import InsufficientStock
from core.models import StockLevel
from functions.adapters.dynamodb import DynamoInventory, from_item
from infra.local.template import Template, create_table_request
from tests.stateful import at_length, in_make_test

SKUS = ["TSHIRT", "MUG"]
LOCATIONS = ["wh-east", "wh-west"]
KEYS = ["ord_a#L1", "ord_a#L2", "ord_b#L1"]  # order#line, as the workflow names reservations

AT_LENGTH = at_length(examples=300, steps=50)
SETTINGS = in_make_test(examples=6, steps=25)

skus = st.sampled_from(SKUS)
locations = st.sampled_from(LOCATIONS)
keys = st.sampled_from(KEYS)
times = st.integers(min_value=1, max_value=2)  # 2: the same call again, as a retry would make it


@dataclass
class Item:
    """What one (sku, location) record must hold."""

    exists: bool = False
    counted: int = 0  # on_hand at the last stock take (0 before any)
    adjusted: int = 0  # the sum of adjustments since
    shipped: int = 0  # units shipped since
    held: dict[str, int] = field(default_factory=dict)

    @property
    def on_hand(self) -> int:
        return self.counted + self.adjusted - self.shipped

    @property
    def reserved(self) -> int:
        return sum(self.held.values())

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


def _level_tuple(level: StockLevel) -> tuple[int, int, int]:
    return level.on_hand, level.reserved, level.available


class InventoryMachine(RuleBasedStateMachine):
    """One fresh table per example; `client` and `props` (the table's Properties) are set by the test that runs it."""

    client: ClassVar[Any] = None
    props: ClassVar[dict[str, Any] | None] = None
    _tables = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        assert self.client is not None and self.props is not None
        self.table = f"test-inventory-{next(self._tables)}"
        self.client.create_table(**create_table_request(self.props, self.table))
        self.inventory = DynamoInventory(self.client, self.table)
        self.model = {(sku, loc): Item() for sku in SKUS for loc in LOCATIONS}
        self._checked: list[dict[str, Any]] | None = None  # the table's items when the port's reads last agreed

    def teardown(self) -> None:
        # The per-sku query path of levels() once per example (every step would double the run time).
        try:
            found = self.inventory.levels(set(SKUS))
            for sku in SKUS:
                assert sorted((lv.location_id, *_level_tuple(lv)) for lv in found[sku]) == self._expected_levels(sku)
        finally:
            self.client.delete_table(TableName=self.table)

    def _expected_levels(self, sku: str) -> list[tuple[str, int, int, int]]:
        return sorted(
            (loc, m.on_hand, m.reserved, m.available) for (s, loc), m in self.model.items() if s == sku and m.exists
        )

    # --- Rules ----------------------------------------------------------------------------------

    @rule(sku=skus, location_id=locations, on_hand=st.integers(min_value=0, max_value=12), times=times)
    def set_on_hand(self, sku: str, location_id: str, on_hand: int, times: int) -> None:
        item = self.model[(sku, location_id)]
        for _ in range(times):
            if on_hand < item.reserved:
                with pytest.raises(InsufficientStock):
                    self.inventory.set_on_hand(sku, location_id, on_hand, reason="stock_take")
                continue
            level = self.inventory.set_on_hand(sku, location_id, on_hand, reason="stock_take")
            item.exists, item.counted, item.adjusted, item.shipped = True, on_hand, 0, 0
            assert _level_tuple(level) == (on_hand, item.reserved, on_hand - item.reserved)

    @rule(sku=skus, location_id=locations, delta=st.integers(min_value=-6, max_value=6).filter(bool))
    def adjust(self, sku: str, location_id: str, delta: int) -> None:
        # Not idempotent by design (an adjustment has no key): called once.
        item = self.model[(sku, location_id)]
        if item.on_hand + delta < item.reserved:
            with pytest.raises(InsufficientStock):
                self.inventory.adjust(sku, location_id, delta, reason="damaged" if delta < 0 else "receipt")
            return
        level = self.inventory.adjust(sku, location_id, delta, reason="damaged" if delta < 0 else "receipt")
        item.exists = True
        item.adjusted += delta
        assert _level_tuple(level) == (item.on_hand, item.reserved, item.available)

    @rule(sku=skus, location_id=locations, key=keys, quantity=st.integers(min_value=1, max_value=6), times=times)
    def reserve(self, sku: str, location_id: str, key: str, quantity: int, times: int) -> None:
        item = self.model[(sku, location_id)]
        for _ in range(times):
            if item.held.get(key) == quantity:  # reserved before: a no-op, whatever is available now
                self.inventory.reserve(sku, location_id, key, quantity)
            elif key in item.held or item.available < quantity:  # held as another quantity: not taken as its own
                with pytest.raises(InsufficientStock):
                    self.inventory.reserve(sku, location_id, key, quantity)
            else:
                self.inventory.reserve(sku, location_id, key, quantity)
                item.held[key] = quantity

    @rule(sku=skus, location_id=locations, key=keys, times=times)
    def release(self, sku: str, location_id: str, key: str, times: int) -> None:
        item = self.model[(sku, location_id)]
        for _ in range(times):
            self.inventory.release(sku, location_id, key)
            item.held.pop(key, None)

    @rule(
        sku=skus, location_id=locations, wanted=st.dictionaries(st.sampled_from(KEYS[:2]), st.integers(0, 6)),
        keep=st.integers(0, 2), stale=st.booleans(), times=times,
    )  # fmt: skip
    def rearrange(self, sku: str, location_id: str, wanted: dict[str, int], keep: int, stale: bool, times: int) -> None:
        # ord_a's reservations on the item moved between its lines' keys, grown or shrunk, as
        # ReserveStock read them (or `stale`: as they were before something changed them).
        item = self.model[(sku, location_id)]
        held = {key: q for key, q in item.held.items() if key in KEYS[:2]}
        if stale:
            held[KEYS[0]] = held.get(KEYS[0], 0) + 1
        want = {key: q for key, q in wanted.items() if q}
        more = sum(want.values()) - sum(held.values())
        for _ in range(times):
            names = held.keys() | want.keys()
            if all(item.held.get(key) == want.get(key) for key in names):  # done already: a no-op
                self.inventory.rearrange(sku, location_id, held, want, keep=keep)
            elif any(item.held.get(key) != held.get(key) for key in names) or (
                more > 0 and item.available < more + keep
            ):
                with pytest.raises(InsufficientStock):
                    self.inventory.rearrange(sku, location_id, held, want, keep=keep)
            else:
                self.inventory.rearrange(sku, location_id, held, want, keep=keep)
                for key in names:
                    item.held.pop(key, None)
                item.held.update(want)

    @rule(sku=skus, location_id=locations, key=keys, times=times)
    def ship(self, sku: str, location_id: str, key: str, times: int) -> None:
        item = self.model[(sku, location_id)]
        for _ in range(times):
            self.inventory.ship(sku, location_id, key)
            item.shipped += item.held.pop(key, 0)

    # --- Invariants -----------------------------------------------------------------------------

    @invariant()
    def the_table_agrees_with_the_model(self) -> None:
        items = self.client.scan(TableName=self.table)["Items"]
        stored = {(values["sku"], values["location_id"]): values for values in map(from_item, items)}
        assert set(stored) == {item for item, model in self.model.items() if model.exists}
        for (sku, location_id), values in stored.items():
            model = self.model[(sku, location_id)]
            on_hand, reserved, available = (int(values[name]) for name in ("on_hand", "reserved", "available"))
            held = {key: int(q) for key, q in (values.get("reservations") or {}).items()}
            assert 0 <= reserved <= on_hand, (sku, location_id, values)
            assert available == on_hand - reserved >= 0, (sku, location_id, values)
            assert reserved == sum(held.values()), (sku, location_id, values)
            assert held == model.held, (sku, location_id)
            # Units are conserved: nothing appears or disappears outside counts, adjustments, shipments.
            assert on_hand == model.counted + model.adjusted - model.shipped, (sku, location_id)

        # The port's reads agree: levels by key lookup (the capture path) and reservations. They
        # read nothing but the table (DynamoInventory keeps no state of its own), and what they must
        # answer is the table's (the model agrees with it on every field they return, checked
        # above): when the table holds what it held at the last check, they answered it then. Two
        # steps in three leave it so (a refusal, a retry's second call, a release of nothing), and
        # these two reads were a third of the run.
        if items == self._checked:
            return
        by_key = self.inventory.levels(set(SKUS), LOCATIONS)
        for sku in SKUS:
            assert sorted((lv.location_id, *_level_tuple(lv)) for lv in by_key[sku]) == self._expected_levels(sku)
        asked = {item: KEYS for item in self.model}
        assert self.inventory.reservations(asked) == {
            (sku, loc, key): q for (sku, loc), model in self.model.items() for key, q in model.held.items()
        }
        self._checked = items


def machine_on(client: Any, **attributes: Any) -> type[InventoryMachine]:
    props = Template.load().properties("AWS::DynamoDB::Table")["InventoryTable"]
    return type("DynamoInventoryMachine", (InventoryMachine,), {"client": client, "props": props, **attributes})


def test_dynamo_inventory_behaves_like_its_model(aws):
    run_state_machine_as_test(machine_on(aws.dynamodb), settings=SETTINGS)


@pytest.mark.fuzz
def test_dynamo_inventory_behaves_like_its_model_at_length(aws):
    run_state_machine_as_test(machine_on(aws.dynamodb), settings=AT_LENGTH)


class Noted:
    """The inventory's calls, with their arguments, noted in `steps`."""

    def __init__(self, inventory: DynamoInventory, steps: list[tuple[Any, ...]]):
        self._inventory, self._steps = inventory, steps

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._inventory, name)

        def noted(*args: Any, **kwargs: Any) -> Any:
            self._steps.append((name, args, sorted(kwargs.items())))
            return method(*args, **kwargs)

        return noted


def test_make_test_runs_the_same_steps_every_time(aws):
    # The examples were drawn at random (and a failure once found replayed first from .hypothesis):
    # a run of the suite tried other steps than the last, and a failure there was gone when run again.
    def steps_of_one_run() -> list[tuple[Any, ...]]:
        steps: list[tuple[Any, ...]] = []

        def __init__(machine: InventoryMachine) -> None:
            InventoryMachine.__init__(machine)
            machine.inventory = Noted(machine.inventory, steps)

        machine = machine_on(aws.dynamodb, __init__=__init__)
        run_state_machine_as_test(machine, settings=settings(SETTINGS, max_examples=3, stateful_step_count=10))
        return steps

    first = steps_of_one_run()
    assert len(first) > 10
    assert steps_of_one_run() == first
