"""The README's plugin guide documents every hook with its current signature, and its examples work."""

import importlib
import inspect
import re
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from core import hookspecs
from core.errors import OutOfStock
from core.money import Money
from core.pricing import Pricing
from functions.plugin_loading import load_plugin_manager
from tests.unit.conftest import a_product, an_address, an_order
from tests.unit.world import build_world

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _hooks():
    return {name: fn for name, fn in vars(hookspecs).items() if name.startswith("oms_") and callable(fn)}


def test_every_hook_is_documented_with_its_parameters():
    documented = dict(re.findall(r"^`(oms_\w+)\(([^)]*)\)", README, flags=re.M))
    for name, fn in _hooks().items():
        assert name in documented, f"{name} is missing from the README's plugin guide"
        params = [p.strip() for p in documented[name].split(",") if p.strip()]
        assert params == list(inspect.signature(fn).parameters), f"{name}'s documented signature drifted"


def test_every_hook_is_documented_with_the_answer_its_spec_declares():
    # Before: oms_carrier_tracking_update was documented as answering list[TrackingUpdate] | None,
    # while its spec (and the prose under it) takes a RefusedTrackingEvent in the place of an event.
    documented = dict(re.findall(r"^`(oms_\w+)\([^)]*\) -> ([^`]+)`", README, flags=re.M))
    for name, fn in _hooks().items():
        answer = inspect.signature(fn).return_annotation  # a string: hookspecs postpones annotations
        assert documented.get(name) == (answer if isinstance(answer, str) else inspect.formatannotation(answer)), name


def test_every_hook_has_a_docstring_and_firstresult_hooks_say_so():
    for name, fn in _hooks().items():
        doc = inspect.getdoc(fn) or ""
        assert ":return:" in doc, name
        firstresult = getattr(fn, "oms_spec", {}).get("firstresult", False)
        assert firstresult == ("Stops at first non-None result" in doc), name


def test_the_guide_says_stops_at_first_non_none_result_exactly_of_the_firstresult_hooks():
    guide = README[README.index("### Hooks") : README.index("### What a plugin receives")]
    entries = re.split(r"^`(oms_\w+)\(", guide, flags=re.M)[1:]
    described = {name: " ".join(text.split()) for name, text in zip(entries[::2], entries[1::2], strict=True)}
    assert set(described) == set(_hooks())
    for name, fn in _hooks().items():
        firstresult = getattr(fn, "oms_spec", {}).get("firstresult", False)
        assert ("Stops at first non-None result" in described[name]) == firstresult, name


def _models_in(annotation: object) -> set[type[BaseModel]]:
    """The OMS models an annotation names, and those their fields hold, which a plugin builds."""
    found: set[type[BaseModel]] = set()
    for arg in typing.get_args(annotation) or (annotation,):
        if typing.get_args(arg):
            found |= _models_in(arg)
        elif isinstance(arg, type) and issubclass(arg, BaseModel) and arg.__module__.startswith("core."):
            found.add(arg)
            for field in arg.model_fields.values():
                found |= _models_in(field.annotation)
    return found


def test_every_type_a_hook_answers_is_in_the_guides_table_with_the_module_it_imports_from():
    # A third party had to read core/hookspecs.py's imports to learn where CarrierShipment and
    # PaymentResult come from (the guide named TaxRate's module alone), and core/workflow_types.py
    # to learn RefusedField's.
    text = README[README.index("| type | import from | built as |") :].split("\n\n")[0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()[2:]]
    listed = {}
    for names, module, _ in rows:
        for name in re.findall(r"`(\w+)`", names):
            listed[name] = getattr(importlib.import_module(module.strip("`")), name)
    answered = set()
    for fn in _hooks().values():
        # The answer's annotation alone: a parameter's may name a type imported for type checkers only.
        returns = types.SimpleNamespace(__annotations__={"return": fn.__annotations__["return"]})
        answered |= _models_in(typing.get_type_hints(returns, globalns=fn.__globals__)["return"])
    assert answered <= set(listed.values()), sorted(model.__name__ for model in answered - set(listed.values()))
    assert all(listed[model.__name__] is model for model in answered)


# --- The guide's examples run as written --------------------------------------------------------


def example(after: str, name: str) -> types.ModuleType:
    """The first python block of the README after the text `after`, imported as module `name`."""
    block = re.search(r"```python\n(.*?)```", README[README.index(after) :], flags=re.S)
    assert block is not None, f"no python example after {after!r}"
    module = types.ModuleType(name)
    exec(compile(block.group(1), f"README.md ({name})", "exec"), module.__dict__)
    return module


def test_the_first_example_taxes_norway():
    plugins = load_plugin_manager(example("## Plugins", "my_oms_plugin"))

    priced = Pricing(plugins).price(
        an_order(("MUG-1", 1), currency="EUR"), {"MUG-1": a_product(currency="EUR")}, an_address("NO", None)
    )

    assert priced.totals.tax == Money.of("2.50", "EUR")


STOCK = [("TSHIRT", "wh-west", 5), ("TSHIRT", "wh-east", 5)]


def test_the_location_veto_example_makes_sourcing_skip_the_vetoed_location(monkeypatch):
    monkeypatch.setenv("OMS_PLUGIN_LOCATION_VETO_LOCATIONS", "wh-west, somewhere-else")
    world = build_world(STOCK, example("### A rule that vetoes a location", "oms_location_veto"))

    order = world.allocated(("TSHIRT", 2))

    # wh-west is nearer to San Francisco: without the veto it would be chosen.
    assert [(a.location_id, a.quantity) for a in order.allocations] == [("wh-east", 2)]
    assert world.catalog.get_location("wh-west") is not None  # vetoed for sourcing, not removed


def test_without_its_setting_the_location_veto_vetoes_nothing(monkeypatch):
    monkeypatch.delenv("OMS_PLUGIN_LOCATION_VETO_LOCATIONS", raising=False)
    world = build_world(STOCK, example("### A rule that vetoes a location", "oms_location_veto"))

    assert [a.location_id for a in world.allocated(("TSHIRT", 2)).allocations] == ["wh-west"]


def test_an_order_only_vetoed_locations_could_supply_is_out_of_stock(monkeypatch):
    monkeypatch.setenv("OMS_PLUGIN_LOCATION_VETO_LOCATIONS", "wh-west,wh-east")
    world = build_world(STOCK, example("### A rule that vetoes a location", "oms_location_veto"))
    order_id = world.place(("TSHIRT", 2))
    world.workflow.authorize_payment(order_id, attempt=0)

    with pytest.raises(OutOfStock):
        world.workflow.reserve_stock(order_id)


# --- What the guide says of the built-in plugins ----------------------------------------------------


def builtin_plugins() -> dict[str, types.ModuleType]:
    """The built-in plugins by entry-point name (pyproject.toml's `oms` group)."""
    import importlib
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    return {
        name: importlib.import_module(module) for name, module in pyproject["project"]["entry-points"]["oms"].items()
    }


def test_the_built_in_fallbacks_the_plugin_order_names_are_those_with_trylast_implementations():
    # Before: the list left out return_policy, whose oms_return_policy is trylast too.
    (sentence,) = re.findall(r"The built-in fallbacks are `trylast`\s*\(([^)]*)\)", README)
    named = set(re.findall(r"`(\w+)`", sentence))
    trylast = {
        name
        for name, module in builtin_plugins().items()
        if any(getattr(fn, "oms_impl", {}).get("trylast") for fn in vars(module).values())
    }
    assert "catalog_price" in trylast and named == trylast


def test_the_sample_promotion_codes_the_guide_lists_are_those_of_the_packaged_file():
    # Before: APP15 (15 % off in the mobile app) was in the file and not in the list.
    import json

    from plugins.data_files import DATA_DIR

    (cell,) = re.findall(r"Sample codes: ([^|]*)\|", README)
    listed = set(re.findall(r"`([A-Z0-9]+)`", cell))
    codes = {promotion["code"] for promotion in json.loads((DATA_DIR / "promotions.json").read_text())["promotions"]}
    assert "WELCOME10" in codes and listed == codes
