"""One global lock around every request moto serves, because moto is not thread-safe.

DynamoDB guarantees atomicity per request, so one request at a time inside the emulator is the
faithful model; threads then test *our* logic, not moto's dictionaries (measured: unserialized,
8 threads oversold stock or crashed in 5 rounds of 20; serialized, 0 in 60).
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from infra.local.moto_patches import AppliedBy, MotoPatch, Replacements


def queued_seconds(native_id: int | None = None) -> float:
    """Seconds the thread (this one by default; `native_id` is threading.get_native_id()'s) has spent
    runnable but waiting for a CPU that the machine's other processes, or this process's other
    threads, held: Linux's schedstat run_delay. 0.0 where the kernel does not say (no /proc)."""
    try:
        if native_id is None or native_id == threading.get_native_id():
            return _run_delay(_own_schedstat())
        with open(f"/proc/self/task/{native_id}/schedstat", "rb") as stats:
            return _run_delay(stats.fileno())
    except (OSError, ValueError, IndexError):
        return 0.0


def _run_delay(fd: int) -> float:
    return int(os.pread(fd, 128, 0).split()[1]) / 1e9


class _Schedstat:
    """A thread's schedstat file, kept open: each read is one pread, which the kernel answers
    afresh, instead of an open, a read and a close (measured 2 µs against 19 µs on a loaded
    machine; a function's run reads it at least twice). Closed when its thread ends, with the
    thread's locals."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __del__(self) -> None:
        os.close(self.fd)


_schedstat = threading.local()


def _own_schedstat() -> int:
    mine = getattr(_schedstat, "file", None)
    if mine is None:
        path = f"/proc/self/task/{threading.get_native_id()}/schedstat"
        mine = _schedstat.file = _Schedstat(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
    return mine.fd


class Waited:
    """Seconds one thread has spent waiting to take MOTO_LOCK, summed; readable from any thread.
    The time it waited for a CPU once the lock was free is left out: queued_seconds() has it."""

    __slots__ = ("seconds",)

    def __init__(self) -> None:
        self.seconds = 0.0

    @contextmanager
    def counting(self) -> Iterator[None]:
        started, queued = time.monotonic(), queued_seconds()
        try:
            yield
        finally:
            self.seconds += time.monotonic() - started - (queued_seconds() - queued)


_waits = threading.local()


def waited() -> Waited:
    """This thread's wait for MOTO_LOCK so far. On AWS a function's call to DynamoDB or SQS does not
    queue behind another function's call: the local runtime does not count this wait as the run's
    time (infra/local/lambdas.py RunClock)."""
    mine = getattr(_waits, "waited", None)
    if mine is None:
        mine = _waits.waited = Waited()
    return mine


class _CountingRLock:
    """A re-entrant lock that adds what each acquire waited to the thread's Waited. Taken at once
    (the usual case), nothing is measured."""

    def __init__(self) -> None:
        self._lock = threading.RLock()

    def __enter__(self) -> bool:
        if not self._lock.acquire(blocking=False):
            with waited().counting():
                self._lock.acquire()
        return True

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


MOTO_LOCK = _CountingRLock()  # re-entrant: a moto action may dispatch another (Step Functions)


def _serialized(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with MOTO_LOCK:
            return original(*args, **kwargs)

    return locked


def _replacements() -> Replacements:
    from moto.core.responses import BaseResponse
    from moto.s3.responses import S3Response

    # Every service funnels through BaseResponse.call_action except S3, which dispatches on its own.
    entry_points = [(BaseResponse, "call_action"), (S3Response, "bucket_response"), (S3Response, "key_response")]
    return {(owner, name): _serialized(owner.__dict__[name]) for owner, name in entry_points}


PATCH = MotoPatch(
    "lock",
    applied_by=AppliedBy.STACK,
    changes="one lock around every request moto serves (moto is not thread-safe; DynamoDB is atomic "
    "per request), released while an in-process handler runs inside a moto action.",
    expects={
        "moto.core.responses.BaseResponse.call_action": "(self)",
        "moto.s3.responses.S3Response.bucket_response": "(self, request, full_url, headers)",
        "moto.s3.responses.S3Response.key_response": "(self, request, full_url, headers)",
    },
    replacements=_replacements,
    upstream="moto documents that it is not thread-safe, getmoto/moto#7166",
)


@contextmanager
def released() -> Iterator[None]:
    """Lets go of MOTO_LOCK (every level this thread holds) for the block, then takes it back: a
    handler that runs *inside* a moto action (a Step Functions Lambda task, through moto's Lambda
    Invoke) must not hold it, or every other thread's moto call waits for the whole handler, and a
    handler waiting on a thread that needs moto deadlocks. A no-op when this thread does not hold it.
    """
    held = MOTO_LOCK._lock  # what threading.Condition does with an RLock: every level at once
    if not held._is_owned():  # type: ignore[attr-defined]
        yield
        return
    state = held._release_save()  # type: ignore[attr-defined]
    try:
        yield
    finally:
        with waited().counting():
            held._acquire_restore(state)  # type: ignore[attr-defined]
