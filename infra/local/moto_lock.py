"""One global lock around every request moto serves, because moto is not thread-safe.

DynamoDB guarantees atomicity per request, so one request at a time inside the emulator is the
faithful model; threads then test *our* logic, not moto's dictionaries (measured: unserialized,
8 threads oversold stock or crashed in 5 rounds of 20; serialized, 0 in 60).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

MOTO_LOCK = threading.RLock()  # re-entrant: a moto action may dispatch another (Step Functions)

_installed: list[tuple[type, str, Callable[..., Any]]] = []
_install_count = 0
_install_guard = threading.Lock()


def _entry_points() -> list[tuple[type, str]]:
    from moto.core.responses import BaseResponse
    from moto.s3.responses import S3Response

    # Every service funnels through BaseResponse.call_action except S3, which dispatches on its own.
    return [(BaseResponse, "call_action"), (S3Response, "bucket_response"), (S3Response, "key_response")]


def _serialized(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with MOTO_LOCK:
            return original(*args, **kwargs)

    locked.__oms_serialized__ = True  # type: ignore[attr-defined]
    return locked


def install() -> None:
    """Serialize moto from now on. Counted: each install() needs its uninstall()."""
    global _install_count
    with _install_guard:
        _install_count += 1
        if _install_count > 1:
            return
        for owner, name in _entry_points():
            original = owner.__dict__[name]
            _installed.append((owner, name, original))
            setattr(owner, name, _serialized(original))


def uninstall() -> None:
    global _install_count
    with _install_guard:
        if _install_count == 0:
            return
        _install_count -= 1
        if _install_count:
            return
        while _installed:
            owner, name, original = _installed.pop()
            setattr(owner, name, original)


def is_installed() -> bool:
    return _install_count > 0


@contextmanager
def released() -> Iterator[None]:
    """Lets go of MOTO_LOCK (every level this thread holds) for the block, then takes it back.

    For a handler that runs *inside* a moto action (a Step Functions Lambda task reaches our
    handler through moto's Lambda Invoke): it must not hold the lock while it runs, or every other
    thread's moto call (the API, the pollers, other executions) waits for the whole handler, and a
    handler that waits on another thread that needs moto deadlocks. A no-op when this thread does
    not hold the lock.
    """
    if not MOTO_LOCK._is_owned():  # type: ignore[attr-defined]
        yield
        return
    state = MOTO_LOCK._release_save()  # type: ignore[attr-defined]  # what threading.Condition uses
    try:
        yield
    finally:
        MOTO_LOCK._acquire_restore(state)  # type: ignore[attr-defined]


@contextmanager
def serialized_moto() -> Iterator[None]:
    """For threaded tests: `with mock_aws(), serialized_moto(): ...`."""
    install()
    try:
        yield
    finally:
        uninstall()
