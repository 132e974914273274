"""Counted replacement of class attributes: how the local stack changes moto (moto_lock,
moto_sqs, moto_memory), so that nested users (a stack inside a test that already serialized moto)
share one installation and the last uninstall() puts the originals back."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

Replacements = dict[tuple[type, str], Any]


class CountedPatch:
    """`replacements()` is called by the first install(): {(owner, attribute name): new value};
    it may read the originals from `owner.__dict__`. Each install() needs its uninstall()."""

    def __init__(self, replacements: Callable[[], Replacements]):
        self._replacements = replacements
        self._originals: Replacements = {}
        self._count = 0
        self._guard = threading.Lock()

    def install(self) -> None:
        with self._guard:
            self._count += 1
            if self._count > 1:
                return
            for (owner, name), replacement in self._replacements().items():
                self._originals[(owner, name)] = owner.__dict__[name]
                setattr(owner, name, replacement)

    def uninstall(self) -> None:
        with self._guard:
            if self._count == 0:
                return
            self._count -= 1
            if self._count:
                return
            for (owner, name), original in reversed(self._originals.items()):
                setattr(owner, name, original)
            self._originals.clear()

    def is_installed(self) -> bool:
        return self._count > 0
