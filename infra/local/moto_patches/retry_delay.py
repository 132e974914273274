"""Step Functions Retry sleeps scaled, for tests.

moto's ASL interpreter really sleeps a Retry's IntervalSeconds (1 s at least); `scaled(0.01)`
turns 1 s into 10 ms. 1.0 (AWS's timing) needs no patch and the stack applies none."""

from __future__ import annotations

import threading
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager

from infra.local.moto_patches import MotoPatch, Replacements

_scales: list[float] = []  # the active scales; the last one applies
_guard = threading.Lock()


def _sleep(seconds: float) -> None:
    with _guard:
        scale = _scales[-1] if _scales else 1.0
    time.sleep(seconds * scale)


def _replacements() -> Replacements:
    from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl

    # retrier_decl calls time.sleep through its module global `time`: only that module's view changes.
    return {(retrier_decl, "time"): types.SimpleNamespace(sleep=_sleep, time=time.time, monotonic=time.monotonic)}


PATCH = MotoPatch(
    "retry_delay",
    changes="Step Functions Retry sleeps multiplied by the stack's `retry_delay_scale` "
    "(OMS_RETRY_DELAY_SCALE); only when it is not 1.0, for tests.",
    expects={"moto.stepfunctions.parser.asl.component.common.retry.retrier_decl.time": "module time"},
    replacements=_replacements,
)


@contextmanager
def scaled(scale: float) -> Iterator[None]:
    with _guard:
        _scales.append(scale)
    PATCH.apply()
    try:
        yield
    finally:
        PATCH.undo()
        with _guard:
            _scales.remove(scale)
