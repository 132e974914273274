"""Every change the local runtime makes to moto, in one idiom: a `MotoPatch` per behaviour.

A MotoPatch replaces named attributes of moto's classes or modules while it is applied: `apply()`
and `undo()` are counted, so nested users (several stacks in one test process, for hours and
across threads, which is why not `mock.patch`) share one installation and the last `undo()` puts
moto's originals back. Each carries the moto behaviour it changes and what each replaced
attribute looked like in MOTO_VERSION (`expects`), which tests/integration/test_moto_patches.py
compares with the installed moto, so a moto upgrade that moves a target fails there.

Patches that route moto to the stack's own objects (Lambda Invoke, S3's Lambda notifications, the
mappings a new record wakes, the API Gateway cache flush, Step Functions' retry sleeps) read them
from the patch's registry: `registered(*items)` adds them and applies the patch for a block.
"""

from __future__ import annotations

import importlib
import inspect
import textwrap
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

Replacements = dict[tuple[Any, str], Any]  # (class or module, attribute name) -> new value

# What every patch below was checked against (pyproject: moto>=5.2.5,<6; a fresh install gets 5.2.6;
# the canaries pass on 5.2.5 too).
MOTO_VERSION = "5.2.6"


@dataclass(eq=False)
class MotoPatch:
    """`replacements()` is called by the first apply(): {(owner, attribute name): new value}; it may
    read the originals from `owner.__dict__`; an attribute the owner lacks ("missing" in `expects`)
    is added, and the last undo() removes it. `expects` is what each original looked like in
    MOTO_VERSION ("module.Owner.attribute" -> `describe(original)`); `upstream` is moto's issue or
    documentation for the behaviour, where there is one."""

    name: str
    changes: str
    expects: dict[str, str]
    replacements: Callable[[], Replacements]
    upstream: str = ""
    _originals: Replacements = field(default_factory=dict, init=False, repr=False)
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


_MODULES = ("lock", "sqs", "memory", "transactions", "streams", "asl_parse", "response_keys", "update_expressions",
            "action_names", "lambda_invoke", "s3_notifications", "arrivals", "apigateway", "retry_delay",
            "callback_responses")  # fmt: skip


def all_patches() -> list[MotoPatch]:
    """Every patch: the stack's, in the order it applies them, then those only the suite applies."""
    return [importlib.import_module(f"{__name__}.{module}").PATCH for module in _MODULES]


def readme_list() -> str:
    """The README's list of patches (tests/integration/test_moto_patches.py checks it is there)."""
    lines = [f"The local runtime changes moto {len(all_patches())} ways (checked against moto {MOTO_VERSION}):"]
    for patch in all_patches():
        upstream = f" (upstream: {patch.upstream})" if patch.upstream else ""
        lines.append(textwrap.fill(f"- `{patch.name}`: {patch.changes}{upstream}", width=100, subsequent_indent="  "))
    return "\n".join(lines) + "\n"
