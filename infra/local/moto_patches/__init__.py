"""Every change the local runtime makes to moto, in one idiom: a `MotoPatch` per behaviour.

A MotoPatch replaces named attributes of moto's classes or modules while it is applied: `apply()`
and `undo()` are counted, so nested users (several stacks in one test process, for hours and
across threads, which is why not `mock.patch`) share one installation and the last `undo()` puts
moto's originals back. Each carries the moto behaviour it changes and what each replaced
attribute looked like in MOTO_VERSION (`expects`), which tests/integration/test_moto_patches.py
compares with the installed moto, so a moto upgrade that moves a target fails there.

A patch may also defer packages of moto (`deferred`): while it is applied, such a package not
imported yet is a stand-in whose own body (its `__init__`) runs at the first read of one of its
names, not when one of its submodules is imported (`batch_package`: moto's Step Functions
interpreter imports moto.batch.utils, and moto.batch's body imports all of moto.ec2).

Patches that route moto to the stack's own objects (Lambda Invoke, S3's Lambda notifications, the
mappings a new record wakes, the API Gateway cache flush, Step Functions' retry sleeps) read them
from the patch's registry: `registered(*items)` adds them and applies the patch for a block.

`all_patches()` is the one list of the package's patches, and each says who applies it
(`applied_by`): the stack (infra/local/stack.py) and the test suite (tests/conftest.py) apply what
`patches_applied_by(...)` answers them, and tests/integration/test_moto_patches.py checks that every
module here is in the list and that each patch is applied where it says, and nowhere else.
"""

from __future__ import annotations

import enum
import importlib
import importlib.util
import inspect
import sys
import textwrap
import threading
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

Replacements = dict[tuple[Any, str], Any]  # (class or module, attribute name) -> new value

# What every patch below was checked against (pyproject: moto>=5.2.5,<6; a fresh install gets 5.2.6;
# the canaries pass on 5.2.5 too).
MOTO_VERSION = "5.2.6"


class AppliedBy(enum.Flag):
    """Who applies a patch, each for as long as it runs (a patch may have several)."""

    NOBODY = 0  # only the code that names it (infra/local/lambdas.py's, not this package's)
    STACK = enum.auto()  # every local stack, as it starts moto, in all_patches()' order
    STACK_REGISTRY = enum.auto()  # every local stack that has the objects, registered where it makes them
    MOCK_AWS = enum.auto()  # the test suite, from every outermost start of mock_aws() to its stop
    TEST_PROCESS = enum.auto()  # the test suite, for its whole process, before any test module is imported


_WHO = {
    AppliedBy.STACK: "the stack",
    AppliedBy.STACK_REGISTRY: "the stack, with its objects",
    AppliedBy.MOCK_AWS: "every mock_aws() of the suite",
    AppliedBy.TEST_PROCESS: "the whole test process",
}


@dataclass(eq=False)
class MotoPatch:
    """`replacements()` is called by the first apply(): {(owner, attribute name): new value}; it may
    read the originals from `owner.__dict__`; an attribute the owner lacks ("missing" in `expects`)
    is added, and the last undo() removes it. `expects` is what each original looked like in
    MOTO_VERSION ("module.Owner.attribute" -> `describe(original)`); `upstream` is moto's issue or
    documentation for the behaviour, where there is one. `deferred` names packages whose body the
    first apply() defers to their first use (module docstring); the last undo() takes out a stand-in
    whose body never ran (the next import runs moto's own), and leaves one that ran: it is moto's
    package from then on, whose names moto's other modules hold. `applied_by` says who applies it
    (module docstring)."""

    name: str
    changes: str
    expects: dict[str, str]
    replacements: Callable[[], Replacements]
    applied_by: AppliedBy = AppliedBy.NOBODY
    upstream: str = ""
    deferred: tuple[str, ...] = ()
    _originals: Replacements = field(default_factory=dict, init=False, repr=False)
    _stand_ins: list[types.ModuleType] = field(default_factory=list, init=False, repr=False)
    _count: int = field(default=0, init=False, repr=False)
    _registry: list[Any] = field(default_factory=list, init=False, repr=False)
    _guard: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def apply(self) -> None:
        with self._guard:
            self._count += 1
            if self._count > 1:
                return
            for (owner, attribute), replacement in self.replacements().items():
                self._originals[(owner, attribute)] = owner.__dict__.get(attribute, _MISSING)  # a new attribute
                setattr(owner, attribute, replacement)
            self._stand_ins = [stand_in for name in self.deferred if (stand_in := _defer(name)) is not None]

    def undo(self) -> None:
        """One per apply(); one too many is harmless."""
        with self._guard:
            if self._count == 0:
                return
            self._count -= 1
            if self._count:
                return
            for (owner, attribute), original in reversed(self._originals.items()):
                if original is _MISSING:
                    delattr(owner, attribute)
                else:
                    setattr(owner, attribute, original)
            self._originals.clear()
            for stand_in in reversed(self._stand_ins):
                _take_out(stand_in)
            self._stand_ins.clear()

    def is_applied(self) -> bool:
        return self._count > 0

    @contextmanager
    def registered(self, *items: Any) -> Iterator[None]:
        """Applied, with `items` in the registry, for the block."""
        with self._guard:
            self._registry.extend(items)
        self.apply()
        try:
            yield
        finally:
            self.undo()
            with self._guard:
                for item in items:
                    self._registry.remove(item)

    def registrations(self) -> list[Any]:
        """The registry, newest first."""
        with self._guard:
            return self._registry[::-1]

    def targets(self) -> dict[str, Any]:
        """ "module.Owner.attribute" -> moto's current value, for the canary (applied or not, the
        original)."""
        with self._guard:
            originals = dict(self._originals)
        found = {}
        for owner, attribute in self.replacements():
            where = owner.__name__ if inspect.ismodule(owner) else f"{owner.__module__}.{owner.__qualname__}"
            found[f"{where}.{attribute}"] = originals.get((owner, attribute), owner.__dict__.get(attribute, _MISSING))
        return found


_MISSING = object()


_deferred_guard = threading.RLock()
_running: set[str] = set()  # the deferred packages whose body is running now


class _Deferred(types.ModuleType):
    """A package with its spec and `__path__` but not its body yet: its submodules import as they
    would (the import system reads only `__path__`); the first read of a name it does not have,
    other than a submodule's or a dunder, runs the body into it, once (another thread waits for
    it), and it is an ordinary module from then on. A body that raises leaves it deferred."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or importlib.util.find_spec(f"{self.__name__}.{name}") is not None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")  # the import system's turn
        with _deferred_guard:
            if type(self) is _Deferred and self.__name__ not in _running:
                _running.add(self.__name__)
                try:
                    self.__spec__.loader.exec_module(self)  # type: ignore[union-attr]
                    self.__class__ = types.ModuleType
                finally:
                    _running.discard(self.__name__)
        if type(self) is _Deferred:  # read by its own body while it runs: not there yet
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        return getattr(self, name)


def _defer(name: str) -> types.ModuleType | None:
    """A stand-in for the package `name` in sys.modules (and as its parent's attribute), or None if
    it is imported already."""
    with _deferred_guard:
        if name in sys.modules:
            return None
        spec = importlib.util.find_spec(name)
        if spec is None or spec.submodule_search_locations is None:
            raise ValueError(f"{name} is not a package")
        stand_in = importlib.util.module_from_spec(spec)
        stand_in.__class__ = _Deferred
        sys.modules[name] = stand_in
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, stand_in)
        return stand_in


def _take_out(stand_in: types.ModuleType) -> None:
    """The stand-in out of sys.modules and its parent, if its body never ran. Its submodules stay
    imported: moto's modules hold their names."""
    with _deferred_guard:
        name = stand_in.__name__
        if type(stand_in) is not _Deferred or sys.modules.get(name) is not stand_in:
            return
        del sys.modules[name]
        parent, _, child = name.rpartition(".")
        if parent and sys.modules[parent].__dict__.get(child) is stand_in:
            delattr(sys.modules[parent], child)


def describe(value: Any) -> str:
    """A function's signature, or the kind of a non-callable attribute (what `expects` records)."""
    if value is _MISSING:
        return "missing"
    if isinstance(value, staticmethod | classmethod):
        value = value.__func__
    if inspect.isfunction(value):  # parameter names and kinds: annotations' spelling varies
        signature = inspect.signature(value)
        bare = [parameter.replace(annotation=inspect.Parameter.empty) for parameter in signature.parameters.values()]
        return str(signature.replace(parameters=bare, return_annotation=inspect.Signature.empty))
    if inspect.ismodule(value):
        return f"module {value.__name__}"
    return type(value).__name__


# The package's patches, in the order the stack applies them: `batch_package` before anything imports
# the Step Functions interpreter (`asl_parse`'s replacements do).
_MODULES = ("batch_package", "lock", "sqs", "memory", "transactions", "streams", "asl_parse", "response_keys",
            "update_expressions", "action_names", "lambda_invoke", "s3_notifications", "arrivals", "apigateway",
            "retry_delay", "callback_responses")  # fmt: skip


def all_patches() -> list[MotoPatch]:
    """Every patch of the package, in the order the stack applies them."""
    return [importlib.import_module(f"{__name__}.{module}").PATCH for module in _MODULES]


def patches_applied_by(who: AppliedBy) -> list[MotoPatch]:
    """The patches `who` applies, in all_patches()' order."""
    return [patch for patch in all_patches() if who in patch.applied_by]


def readme_list() -> str:
    """The README's list of patches (tests/integration/test_moto_patches.py checks it is there)."""
    lines = [f"The local runtime changes moto {len(all_patches())} ways (checked against moto {MOTO_VERSION}):"]
    for patch in all_patches():
        who = "; ".join(text for member, text in _WHO.items() if member in patch.applied_by)
        upstream = f" (upstream: {patch.upstream})" if patch.upstream else ""
        lines.append(
            textwrap.fill(f"- `{patch.name}` ({who}): {patch.changes}{upstream}", width=100, subsequent_indent="  ")
        )
    return "\n".join(lines) + "\n"
