"""Every model of core/, of the API's schemas and of the built-in plugins is built on first use (defer_build): a
function pays only for the models it uses."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

import core
import plugins

ROOT = Path(__file__).resolve().parents[2]


CORE = [info.name for info in pkgutil.iter_modules(core.__path__, "core.")]
BUILT_IN_PLUGINS = [info.name for info in pkgutil.iter_modules(plugins.__path__, "plugins.") if not info.ispkg]


def _models(modules: list[str]) -> list[type[BaseModel]]:
    """Every model defined in `modules` (imported here)."""
    models = []
    for name in modules:
        module = importlib.import_module(name)
        models.extend(
            value
            for value in vars(module).values()
            if isinstance(value, type)
            and issubclass(value, BaseModel)
            and value is not BaseModel
            and value.__module__ == module.__name__
        )
    return models


def test_every_model_of_core_and_of_the_api_schemas_defers_its_build():
    models = _models([*CORE, "functions.api.schemas"])

    assert len(models) > 100  # the walk found them: core/ holds well over a hundred models
    assert [model.__qualname__ for model in models if not model.model_config.get("defer_build")] == []


def test_every_model_of_the_built_in_plugins_defers_its_build():
    # Every function loads every plugin: a model built at import (a data file's schema, a carrier's
    # webhook) would cost each new container of every function, used or not.
    models = _models(BUILT_IN_PLUGINS)

    assert {"PromotionsFile", "GeoCentroids", "TaxTable", "TrackingWebhook"} <= {model.__qualname__ for model in models}
    assert [model.__qualname__ for model in models if not model.model_config.get("defer_build")] == []


# A fresh interpreter, as a new container is: importing every module of core/ builds none of its
# models, and validating one builds it on the spot.
FRESH = """
import json
from tests.unit.test_models_deferred import CORE, _models
from tests.builders import order_body
models = {model.__qualname__: model for model in _models(CORE)}
def built():
    return sorted(name for name, model in models.items() if model.__pydantic_complete__)
before = built()
models["PlaceOrder"].model_validate(order_body())
print(json.dumps({"before": before, "after": built()}))
"""


def test_importing_core_builds_no_model_and_using_one_builds_it():
    out = subprocess.run([sys.executable, "-c", FRESH], cwd=ROOT, capture_output=True, text=True, check=True)
    built = json.loads(out.stdout.splitlines()[-1])

    assert built["before"] == []
    assert "PlaceOrder" in built["after"]
    assert "Order" not in built["after"]  # validating an order's body never builds the stored order's model


def test_no_model_field_defaults_to_a_factory_whose_signature_pydantic_must_parse():
    # Building a model reads each default_factory's signature; `list`'s is parsed with ast each
    # time (~150 µs), so a new container's first order paid some 4 ms for its 26 list fields.
    from pydantic._internal._fields import takes_validated_data_argument

    from core.fields import empty_list

    fields = [
        (f"{model.__qualname__}.{name}", field.default_factory)
        for model in _models([*CORE, "functions.api.schemas", *BUILT_IN_PLUGINS])
        for name, field in model.model_fields.items()
        if field.default_factory is not None
    ]

    assert any(factory is empty_list for _, factory in fields)
    assert [name for name, factory in fields if factory in (list, set, tuple, frozenset)] == []
    # The same answer pydantic gets from list: no validated data. And a new list every time.
    assert takes_validated_data_argument(empty_list) is takes_validated_data_argument(list) is False
    assert empty_list() == [] and empty_list() is not empty_list()


def test_every_model_is_made_from_evaluated_annotations():
    # pydantic compiles and evaluates each string annotation when a class is made (deferred build
    # or not): core/models.py's ~260 were ~3 ms of every new container's import, and ~250 more in
    # the other modules a new API container imports (the rest: other routes). So no module of models says
    # `from __future__ import annotations`; a name used before it is defined is quoted, and so is
    # one a class body shadows (a repository's `list` method), in method annotations only.
    modules = [*CORE, "functions.api.schemas", *BUILT_IN_PLUGINS]
    models = _models(modules)
    strings = [
        f"{model.__module__}.{model.__qualname__}.{name}"
        for model in models
        for name, annotation in vars(model).get("__annotations__", {}).items()
        if isinstance(annotation, str)
    ]

    assert len(models) > 100
    assert strings == []
    assert "core.models" in {model.__module__ for model in models}
