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

from infra.local.moto_patches import MotoPatch, Replacements

MOTO_LOCK = threading.RLock()  # re-entrant: a moto action may dispatch another (Step Functions)


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
    if not MOTO_LOCK._is_owned():  # type: ignore[attr-defined]
        yield
        return
    state = MOTO_LOCK._release_save()  # type: ignore[attr-defined]  # what threading.Condition uses
    try:
        yield
    finally:
        MOTO_LOCK._acquire_restore(state)  # type: ignore[attr-defined]
