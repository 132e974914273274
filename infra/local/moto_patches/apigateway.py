"""The `apigateway` patch (its `changes` say what it does): the API function's ordinary boto3 call.
Registered with (api_id, stage, flush) for a block: a flush of that stage calls `flush`."""

from __future__ import annotations

import re
from typing import Any

from infra.local.moto_patches import AppliedBy, MotoPatch, Replacements

# DELETE /restapis/{restapi_id}/stages/{stage_name}/cache/authorizers (202, no body on AWS).
_FLUSH = re.compile(
    r"^https?://apigateway\.[^/]+/restapis/(?P<api>[^/?]+)/stages/(?P<stage>[^/?]+)/cache/authorizers/?$"
)
flushed: list[tuple[str, str]] = []  # every flush answered, oldest first: what tests read


def _replacements() -> Replacements:
    from moto.core.botocore_stubber import BotocoreStubber

    original = BotocoreStubber.__dict__["process_request"]

    def process_request(self: Any, request: Any) -> Any:
        match = _FLUSH.match(request.url.split("?", 1)[0]) if request.method == "DELETE" else None
        if match is None:
            return original(self, request)
        flushed.append((match["api"], match["stage"]))
        for api, stage, flush in PATCH.registrations():
            if (api, stage) == (match["api"], match["stage"]):
                flush()
        # A stage with nothing cached (or no gateway in front of it) has nothing to forget.
        return 202, {"Content-Type": "application/json"}, b"{}"

    return {(BotocoreStubber, "process_request"): process_request}


PATCH = MotoPatch(
    "apigateway",
    applied_by=AppliedBy.STACK_REGISTRY,
    changes="API Gateway's FlushStageAuthorizersCache, which moto does not implement, answered 202 in "
    "process, and the local gateway serving that stage forgets its cached authorizer answers.",
    expects={"moto.core.botocore_stubber.BotocoreStubber.process_request": "(self, request)"},
    replacements=_replacements,
)
