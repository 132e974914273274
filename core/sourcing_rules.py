"""Sourcing rules as data: their model, their versions, and how they narrow what sourcing may use."""

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.fields import empty_list
from core.models import Identifier, Location, Shown, StockLevel, Strict

MAX_RULE_LOCATIONS = 500  # a network's worth; keeps one rules item well under DynamoDB's 400 KB


class Prefer(StrEnum):
    NEAREST = "nearest"  # each unit from the nearest location that has it
    FEWEST_SHIPMENTS = "fewest_shipments"  # as few locations as possible, then the nearest


Units = Annotated[int, Field(ge=0, le=1_000_000_000, strict=True)]


class SourcingRulesInput(Strict):
    """Rules as a client sends them: the `rules` of POST /sourcing/simulate (a rule left out keeps
    its current value), and the base of PUT /sourcing/rules' body (a rule left out takes its
    default)."""

    max_shipments: Annotated[int, Field(ge=1, le=100, strict=True)] | None = None
    excluded_locations: Annotated[
        list[Identifier], Field(max_length=MAX_RULE_LOCATIONS, json_schema_extra={"uniqueItems": True})
    ] = Field(default_factory=empty_list)
    safety_stock: Annotated[dict[Identifier, Units], Field(max_length=MAX_RULE_LOCATIONS)] = Field(default_factory=dict)
    prefer: Prefer = Prefer.NEAREST

    @field_validator("excluded_locations")
    @classmethod
    def _unique(cls, ids: list[str]) -> list[str]:
        if len(set(ids)) != len(ids):
            raise ValueError("excluded_locations names a location twice")
        return ids

    @field_validator("safety_stock")
    @classmethod
    def _holding_back(cls, units: dict[str, int]) -> dict[str, int]:
        # 0 holds nothing back: kept, {"loc": 0} was rules other than {} (a version that changed
        # nothing, and woke every backordered order). Dropped, it names no location to check.
        return {location_id: n for location_id, n in units.items() if n}


class NewSourcingRules(SourcingRulesInput):
    """The body of PUT /sourcing/rules: `prefer` is required (API.md), the other rules default."""

    prefer: Prefer


class SourcingRules(BaseModel):
    """One version of the rules. Version 0 is the defaults, in force until the first PUT."""

    model_config = ConfigDict(frozen=True, defer_build=True, json_schema_serialization_defaults_required=True)

    version: int = 0
    max_shipments: int | None = None
    excluded_locations: list[str] = Field(default_factory=empty_list)
    safety_stock: dict[str, int] = Field(default_factory=dict)
    prefer: Prefer = Prefer.NEAREST
    updated_at: datetime | None = None
    updated_by: str | None = None

    def with_changes(self, given: SourcingRulesInput) -> "SourcingRules":
        """These rules with the ones `given` explicitly (a what-if): the rest keep their value."""
        changes = {name: getattr(given, name) for name in given.model_fields_set}
        return self.model_copy(update=changes)

    def same_as(self, given: SourcingRulesInput) -> bool:
        """Whether `given`, whole (a PUT's body: rules left out take their defaults), are these rules."""
        return all(self._rule_is(name, given) for name in SourcingRulesInput.model_fields)

    def changed_by(self, given: SourcingRulesInput) -> list[str]:
        """The rules `given` explicitly (a what-if) with another value than these have, in the
        order of the body's fields."""
        return [
            name
            for name in SourcingRulesInput.model_fields
            if name in given.model_fields_set and not self._rule_is(name, given)
        ]

    def _rule_is(self, name: str, given: SourcingRulesInput) -> bool:
        """Whether the rule `name` of `given` is this one: excluded locations are a set (their order
        in a body means nothing: a client may keep them in a set, or sort them)."""
        mine, theirs = getattr(self, name), getattr(given, name)
        return set(mine) == set(theirs) if name == "excluded_locations" else mine == theirs

    def eligible(self, locations: list[Location]) -> list[Location]:
        """`locations` without the excluded ones."""
        excluded = set(self.excluded_locations)
        return [loc for loc in locations if loc.location_id not in excluded]

    def admits(self, location_id: str, used: set[str]) -> bool:
        """Whether an order that ships from the locations `used` may take units at `location_id`
        without shipping from more than `max_shipments` locations."""
        return self.max_shipments is None or location_id in used or len(used) < self.max_shipments

    def kept_back(self, location_id: str) -> int:
        return self.safety_stock.get(location_id, 0)

    def for_orders(self, stock: dict[str, list[StockLevel]]) -> dict[str, list[StockLevel]]:
        """The stock orders may take: each level's `available` less its location's safety stock
        (never below 0). Counts (`on_hand`, `reserved`) are untouched."""
        return {
            sku: [
                level.model_copy(update={"available": max(0, level.available - self.kept_back(level.location_id))})
                for level in levels
            ]
            for sku, levels in stock.items()
        }

    def named(self, changed: list[str] | None = None) -> str:
        """How a plan names these rules; `changed`: the rules a what-if gave otherwise, so that a
        plan under them is not taken for one of this version (`changed_by`)."""
        if not changed:
            return f"sourcing rules v{self.version}"
        names = changed[0] if len(changed) == 1 else f"{', '.join(changed[:-1])} and {changed[-1]}"
        return f"sourcing rules v{self.version} with {names} as given"


def unknown_locations(given: SourcingRulesInput, known: set[str], prefix: str = "") -> list[dict[str, str]]:
    """What `given` names that is not a location of the network, as 422 details (`prefix` is
    where the rules sit in the body): a typo would be kept as a rule that excludes or holds back
    nothing, while the operator believes it in force."""
    details = [
        {"field": f"{prefix}excluded_locations[{index}]", "message": f"no location {location_id}"}
        for index, location_id in enumerate(given.excluded_locations)
        if location_id not in known
    ]
    details += [
        {"field": f"{prefix}safety_stock.{location_id}", "message": f"no location {location_id}"}
        for location_id in given.safety_stock
        if location_id not in known
    ]
    return details


def next_version(current: SourcingRules, given: SourcingRulesInput, *, at: datetime, by: str) -> SourcingRules:
    """The version a PUT makes: `given` whole (left-out rules take their defaults)."""
    return SourcingRules(version=current.version + 1, **given.model_dump(), updated_at=at, updated_by=by)


class SourcingRulesHistory(Shown):
    """GET /sourcing/rules/history: versions newest first, and a cursor for older ones."""

    items: list[SourcingRules]
    next_cursor: str | None = None
