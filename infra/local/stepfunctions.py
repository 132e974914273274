"""Step Functions locally: the template's state machines in moto's ASL interpreter.

Each state machine's definition is read from the template (Definition, DefinitionString or a local
DefinitionUri), its DefinitionSubstitutions resolved with the stack's refs and atts, validated by
infra/local/asl.py (moto accepts a dangling Next) and created in moto. Executions run in moto
threads; their Lambda tasks reach the in-process handlers through infra/local/lambda_service.py.

A Retry's IntervalSeconds really sleeps in moto (1 s minimum). `retry_delay_scale` shortens those
sleeps for tests (0.01 turns 1 s into 10 ms); the default 1.0 keeps AWS's timing.
"""

from __future__ import annotations

import threading
import time
import types
from typing import Any

_scale_guard = threading.Lock()
_scaled: list[float] = []  # a stack of active scales; the last one applies
_original_time: Any = None


def install_retry_delay_scale(scale: float) -> None:
    global _original_time
    from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl

    with _scale_guard:
        if not _scaled:
            _original_time = retrier_decl.time
            retrier_decl.time = types.SimpleNamespace(  # type: ignore[attr-defined]
                sleep=lambda seconds: time.sleep(seconds * (_scaled[-1] if _scaled else 1.0)),
                time=time.time,
                monotonic=time.monotonic,
            )
        _scaled.append(scale)


def uninstall_retry_delay_scale(scale: float) -> None:
    global _original_time
    from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl

    with _scale_guard:
        if scale in _scaled:
            _scaled.remove(scale)
        if not _scaled and _original_time is not None:
            retrier_decl.time = _original_time  # type: ignore[attr-defined]
            _original_time = None


def state_machine_arn(name: str, region: str, account_id: str) -> str:
    return f"arn:aws:states:{region}:{account_id}:stateMachine:{name}"
