"""The `retry_delay` patch: moto's ASL interpreter really sleeps a Retry's IntervalSeconds (1 s at
least); registered with 0.01, 1 s is 10 ms. At 1.0 (AWS's timing) the stack applies none."""

from __future__ import annotations

import time
import types

from infra.local.moto_patches import AppliedBy, MotoPatch, Replacements


def _sleep(seconds: float) -> None:
    time.sleep(seconds * next(iter(PATCH.registrations()), 1.0))  # the newest scale applies


def _replacements() -> Replacements:
    from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl

    # retrier_decl calls time.sleep through its module global `time`: only that module's view changes.
    return {(retrier_decl, "time"): types.SimpleNamespace(sleep=_sleep, time=time.time, monotonic=time.monotonic)}


PATCH = MotoPatch(
    "retry_delay",
    applied_by=AppliedBy.STACK_REGISTRY,
    changes="Step Functions Retry sleeps multiplied by the stack's `retry_delay_scale` "
    "(OMS_RETRY_DELAY_SCALE); only when it is not 1.0, for tests.",
    expects={"moto.stepfunctions.parser.asl.component.common.retry.retrier_decl.time": "module time"},
    replacements=_replacements,
)
