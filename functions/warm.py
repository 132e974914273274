"""What a handler module keeps while Lambda keeps its execution environment warm, and forgets on demand."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

T = TypeVar("T")

_WARM: weakref.WeakSet[Warm] = weakref.WeakSet()


class Warm(Generic[T]):
    """`build()` on the first call, the same object after it. Module-level in a handler module, like
    powertools' `logger` and `app`. This module imports nothing heavy, so a handler that must start
    fast (the authorizer) keeps what it builds here without importing the composition root."""

    def __init__(self, build: Callable[[], T]):
        self._build = build
        self._value: T | None = None
        self._lock = threading.Lock()
        _WARM.add(self)

    def __call__(self) -> T:
        value = self._value
        if value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._build()
                value = self._value
        return value

    @contextmanager
    def override(self, value: T) -> Iterator[T]:
        """Serve `value` (a test's) for the block."""
        previous, self._value = self._value, value
        try:
            yield value
        finally:
            self._value = previous

    def forget(self) -> None:
        """The next invocation starts cold."""
        with self._lock:
            self._value = None


def forget_warm_containers() -> None:
    """Every handler module's warm state starts cold: what the local runtime does when a new stack
    (a new account, new clients) starts or stops."""
    for warm in list(_WARM):
        warm.forget()
