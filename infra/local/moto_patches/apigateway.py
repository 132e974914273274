"""API Gateway's FlushStageAuthorizersCache, which moto does not implement, answered in process.

The API function makes its ordinary boto3 call, and the local gateway serving that stage forgets
its cached authorizer answers. Production code knows nothing of this module."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from infra.local.moto_patches import MotoPatch, Replacements

# DELETE /restapis/{restapi_id}/stages/{stage_name}/cache/authorizers (202, no body on AWS).
_FLUSH = re.compile(
    r"^https?://apigateway\.[^/]+/restapis/(?P<api>[^/?]+)/stages/(?P<stage>[^/?]+)/cache/authorizers/?$"
)

_flushers: dict[tuple[str, str], list[Callable[[], None]]] = {}
_lock = threading.Lock()
flushed: list[tuple[str, str]] = []  # every flush answered, oldest first: what tests read


def _replacements() -> Replacements:
    from moto.core.botocore_stubber import BotocoreStubber

    original = BotocoreStubber.__dict__["process_request"]

    def process_request(self: Any, request: Any) -> Any:
        match = _FLUSH.match(request.url.split("?", 1)[0]) if request.method == "DELETE" else None
        if match is None:
            return original(self, request)
        stage = (match["api"], match["stage"])
        with _lock:
            flushed.append(stage)
            flushers = list(_flushers.get(stage, ()))
        for flush in flushers:
            flush()
        # A stage with nothing cached (or no gateway in front of it) has nothing to forget.
        return 202, {"Content-Type": "application/json"}, b"{}"

    return {(BotocoreStubber, "process_request"): process_request}


PATCH = MotoPatch(
    "apigateway",
    changes="API Gateway's FlushStageAuthorizersCache, which moto does not implement, answered 202 in "
    "process, and the local gateway serving that stage forgets its cached authorizer answers.",
    expects={"moto.core.botocore_stubber.BotocoreStubber.process_request": "(self, request)"},
    replacements=_replacements,
)


@contextmanager
def flushing(api_id: str, stage: str, flush: Callable[[], None]) -> Iterator[None]:
    """Installs the answer for the block; a flush of (api_id, stage) calls `flush`."""
    PATCH.apply()
    with _lock:
        _flushers.setdefault((api_id, stage), []).append(flush)
    try:
        yield
    finally:
        with _lock:
            _flushers[(api_id, stage)].remove(flush)
            if not _flushers[(api_id, stage)]:
                del _flushers[(api_id, stage)]
        PATCH.undo()
