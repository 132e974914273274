"""Every model of core/, of the API's schemas and of the built-in plugins is built on first use (defer_build): a
function pays only for the models it uses."""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import subprocess
import sys
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

import core
import plugins

ROOT = Path(__file__).resolve().parents[2]


CORE = [info.name for info in pkgutil.iter_modules(core.__path__, "core.")]
BUILT_IN_PLUGINS = [info.name for info in pkgutil.iter_modules(plugins.__path__, "plugins.") if not info.ispkg]


# The modules of functions/ that define classes, among them models (the API's routes' pages, the
# workflows' steps): their models follow the same rules as core's, a module added later included.
FUNCTIONS_WITH_CLASSES = sorted(
    ".".join(path.relative_to(ROOT).with_suffix("").parts)
    for path in (ROOT / "functions").rglob("*.py")
    if "\nclass " in path.read_text()
)


def _made(factory: Callable[..., Any]) -> Any:
    """What a default factory makes (one that takes the validated data: given none)."""
    from pydantic._internal._fields import takes_validated_data_argument

    return factory({}) if takes_validated_data_argument(factory) else factory()


def _immutable(value: Any) -> bool:
    return isinstance(value, Hashable)


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


def test_every_model_of_functions_defers_its_build():
    # A route's page or a workflow step's input built at import would cost every new container of
    # that function, whether it serves that route or not.
    models = _models(FUNCTIONS_WITH_CLASSES)

    assert {"OrderPage", "Health", "StepInput", "ReturnStepInput"} <= {model.__qualname__ for model in models}
    assert [
        f"{model.__module__}.{model.__qualname__}" for model in models if not model.model_config.get("defer_build")
    ] == []


def test_every_model_of_the_built_in_plugins_defers_its_build():
    # Every function loads every plugin: a model built at import (a data file's schema, a carrier's
    # webhook) would cost each new container of every function, used or not.
    models = _models(BUILT_IN_PLUGINS)

    assert {"PromotionsFile", "GeoCentroids", "TaxTable", "TrackingWebhook"} <= {model.__qualname__ for model in models}
    assert [model.__qualname__ for model in models if not model.model_config.get("defer_build")] == []


def test_no_model_is_generic():
    # pydantic builds a generic model the moment it is parametrized (`Page[Order]` builds `Page`),
    # defer_build or not: a generic page in a module the API imports at its first order cost every
    # new container a model it never used. Pages are written out (functions/api/schemas.py).
    models = _models([*CORE, *BUILT_IN_PLUGINS, *FUNCTIONS_WITH_CLASSES])

    assert [
        f"{model.__module__}.{model.__qualname__}"
        for model in models
        for cls in model.__mro__
        if issubclass(cls, BaseModel)
        and cls is not BaseModel
        and (cls.__pydantic_generic_metadata__["origin"] or cls.__pydantic_generic_metadata__["parameters"])
    ] == []


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


# A fresh interpreter importing every function's handler, as each new container does its own.
HANDLERS = """
import importlib, json, os
from pydantic import BaseModel
from infra.local.template import Template
from tests.integration.conftest import FUNCTION_ENV
os.environ.update(FUNCTION_ENV)
for props in Template.load().functions().values():
    importlib.import_module(props["Handler"].rpartition(".")[0])
def subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from subclasses(sub)
ours = {f"{model.__module__}.{model.__qualname__}" for model in subclasses(BaseModel)
        if model.__module__.split(".")[0] in ("core", "functions", "plugins")}
built = {f"{model.__module__}.{model.__qualname__}" for model in subclasses(BaseModel)
         if model.__module__.split(".")[0] in ("core", "functions", "plugins") and model.__pydantic_complete__}
print(json.dumps({"models": len(ours), "built": sorted(built)}))
"""


def test_importing_any_function_s_handler_builds_no_model():
    # A model instance made at import builds its model there, defer_build or not: every workflow
    # task's StepInput defaulted its trace to `ExecutionTrace()`, built in each new container of the
    # six workflow functions before their first event, used or not (an execution's input carries one).
    out = subprocess.run([sys.executable, "-c", HANDLERS], cwd=ROOT, capture_output=True, text=True, check=True)
    imported = json.loads(out.stdout.splitlines()[-1])

    assert imported["models"] > 100
    assert imported["built"] == []


def test_no_model_field_defaults_to_a_factory_whose_signature_pydantic_must_parse():
    # Building a model reads each default_factory's signature; `list`'s is parsed with ast each
    # time (~150 µs), so a new container's first order paid some 4 ms for its 26 list fields.
    from pydantic._internal._fields import takes_validated_data_argument

    from core.fields import empty_list

    fields = [
        (f"{model.__module__}.{model.__qualname__}.{name}", field.default_factory)
        for model in _models([*CORE, "functions.api.schemas", *BUILT_IN_PLUGINS, *FUNCTIONS_WITH_CLASSES])
        for name, field in model.model_fields.items()
        if field.default_factory is not None
    ]

    assert any(factory is empty_list for _, factory in fields)
    assert [name for name, factory in fields if factory in (list, set, tuple, frozenset)] == []
    # Any other builtin whose signature is text (tuple, bytearray, a deque...) costs the same parse.
    assert [name for name, factory in fields if getattr(factory, "__text_signature__", None) is not None] == []
    # An empty list comes from empty_list alone (not `lambda: []`): one factory, one cost.
    assert [name for name, factory in fields if factory is not empty_list and _made(factory) == []] == []
    # No mutable default is shared between two instances: each call makes a new object.
    assert [
        name for name, factory in fields if _made(factory) is _made(factory) and not _immutable(_made(factory))
    ] == []
    # The same answer pydantic gets from list: no validated data. And a new list every time.
    assert takes_validated_data_argument(empty_list) is takes_validated_data_argument(list) is False
    assert empty_list() == [] and empty_list() is not empty_list()


def test_every_model_is_made_from_evaluated_annotations():
    # pydantic compiles and evaluates each string annotation when a class is made (deferred build
    # or not): core/models.py's ~260 were ~3 ms of every new container's import, and ~250 more in
    # the other modules a new API container imports (the rest: other routes, the workflows' steps). So
    # no module of models says `from __future__ import annotations`; a name used before it is defined
    # is quoted, and so is one a class body shadows (a repository's `list` method), in method
    # annotations only.
    modules = [*CORE, *BUILT_IN_PLUGINS, *FUNCTIONS_WITH_CLASSES]
    models = _models(modules)
    strings = [
        f"{model.__module__}.{model.__qualname__}.{name}"
        for model in models
        for name, annotation in vars(model).get("__annotations__", {}).items()
        if isinstance(annotation, str)
    ]

    assert len(models) > 100
    assert strings == []
    assert {"core.models", "functions.api.schemas", "functions.api.routes.meta", "functions.workflow.step"} <= {
        model.__module__ for model in models
    }


def _names(annotation: ast.expr | None, among: set[str]) -> list[tuple[str, bool]]:
    """The names of `among` that `annotation` uses, each with whether it is quoted."""
    found = []
    for node in ast.walk(annotation) if annotation is not None else ():
        if isinstance(node, ast.Name) and node.id in among:
            found.append((node.id, False))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                quoted = ast.parse(node.value, mode="eval")
            except SyntaxError:
                continue
            found.extend((n.id, True) for n in ast.walk(quoted) if isinstance(n, ast.Name) and n.id in among)
    return found


def _shadowed(source: str) -> list[tuple[str, str, bool]]:
    """(class.where, name, quoted) for each annotation in a class body of `source` that names
    what that body bound before it (a method, a field given a value, a nested class, an
    assignment or import): evaluated when the class is made, it means that binding, not the
    module's name. (A field's value is bound before its own annotation is evaluated.)"""
    found = []
    for cls in (node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ClassDef)):
        bound: set[str] = set()
        for statement in cls.body:
            annotations: list[ast.expr | None] = []
            where = cls.name
            if isinstance(statement, ast.AnnAssign):
                if statement.value is not None and isinstance(statement.target, ast.Name):
                    bound.add(statement.target.id)
                annotations = [statement.annotation]
                where = f"{cls.name}.{ast.unparse(statement.target)}"
            elif isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef):
                arguments = statement.args
                every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
                every += [argument for argument in (arguments.vararg, arguments.kwarg) if argument is not None]
                annotations = [*(argument.annotation for argument in every), statement.returns]
                where = f"{cls.name}.{statement.name}"
            found.extend(
                (where, name, quoted) for annotation in annotations for name, quoted in _names(annotation, bound)
            )
            if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                bound.add(statement.name)
            elif isinstance(statement, ast.Assign | ast.AugAssign):
                targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
                bound.update(n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name))
            elif isinstance(statement, ast.Import | ast.ImportFrom):
                bound.update((alias.asname or alias.name).split(".")[0] for alias in statement.names)
    return found


def _evaluates_annotations(source: str) -> bool:
    return "\nfrom __future__ import annotations\n" not in source


def test_no_annotation_a_class_makes_means_a_name_its_own_body_bound_before():
    # Without `from __future__ import annotations` a class body's annotations are evaluated as the
    # class is made, in its namespace: after `def list(self)` an annotation `list[str]` is that
    # method (a TypeError), and a model's field annotated `date` after a method `date` silently
    # becomes a field validated against the method's signature. Such a name is quoted (a method's
    # annotation, which nothing evaluates in the class) or the binding renamed.
    sources = {
        path.relative_to(ROOT).as_posix(): path.read_text()
        for package in ("core", "functions", "plugins")
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    found = {
        f"{path}:{where}": (name, quoted)
        for path, source in sources.items()
        if _evaluates_annotations(source)
        for where, name, quoted in _shadowed(source)
    }

    assert len([source for source in sources.values() if _evaluates_annotations(source)]) > 30
    assert found["core/webhooks.py:WebhookStore.all"] == ("list", True)  # the walk finds them
    assert {where: name for where, (name, quoted) in found.items() if not quoted} == {}
    # And it would find one: a field given a value, a method, a nested class, each named again.
    sample = "class M(BaseModel):\n    date: date | None = None\n    def day(self) -> date: ...\n    until: day\n"
    assert [(where, name) for where, name, _ in _shadowed(sample)] == [
        ("M.date", "date"),
        ("M.day", "date"),
        ("M.until", "day"),
    ]
