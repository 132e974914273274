"""The `callback_responses` patch: every start of moto registers some 1,300 new response objects
with `responses`, the same ones each time.

`MockAWS._enable_patching` (moto/core/models.py), at every outermost `mock_aws()` start, first
resets moto's `responses` mock (`reset()` -> `reset_responses_mock`: a new, empty registry and
mock-level call list) and then makes a `CallbackResponse` (moto.core.custom_responses_mock's
subclass of responses') for each of its 7 HTTP methods and each URL pattern of
`backend_index.backend_url_patterns` (184 in moto 5.2.6), plus a catch-all answering "not
implemented", and adds each to that registry: 200 empty `mock_aws()` starts and stops take 2.8 to
3.9 ms of CPU each, 0.6 ms with the patch (a process with the stack's modules loaded, 2026-12-06;
every `aws` test, in-process API and local stack of the suite starts moto once), and the objects
are equal to the last start's.

A response object holds what it was made of (method, URL pattern, callback, content type, and the
defaults of responses' constructor: no matchers, not a passthrough, status 200, empty body) and one
thing it gathers: `calls`, the record of the requests it answered (responses adds each call to it
as well as to the mock's own list). Nothing in moto or responses changes the rest after it is
made: the registry's `find` only asks `matches()`, and `get_response` only reads.

While the patch is applied, `moto.core.models.CallbackResponse` (the name `_enable_patching` calls)
is a function that hands back the object made for the same method, URL pattern (text and flags)
and callback the first time, its `calls` emptied, and makes (and keeps) one otherwise. Because
moto's reset has dropped the old registry before it adds them, each start registers each object
once; no call record reaches the next start; and the objects are what moto would have made
(tests/integration/test_moto_patches.py compares every attribute with moto's own, start after
start). The objects kept outlive `undo()`, which puts moto's class back: they are the patch's
saving, and `undo()` runs at every stop. Only `_enable_patching` calls the name (the canary
checks), under moto's `MockAWS._mock_init_lock`.

The suite applies it to every plain `mock_aws()` (tests/conftest.py, `AppliedBy.MOCK_AWS`); the
local stack does not: `make run` starts moto once per process, so there is nothing to reuse.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from infra.local.moto_patches import AppliedBy, MotoPatch, Replacements

# moto makes ~1,300 (methods x URL patterns); the bound only keeps a caller with a new callback at
# each start from growing the dict without end.
KEPT_RESPONSES = 10_000
# No lock of its own: moto calls it only under `MockAWS._mock_init_lock` (one took 0.45 ms a start).
_kept: dict[tuple[Any, ...], Any] = {}


def _replacements() -> Replacements:
    from moto.core import custom_responses_mock, models

    def callback_response(method: str, url: Any, callback: Callable[..., Any]) -> Any:
        # A compiled pattern is equal to (and hashes as) one compiled again from the same text and
        # flags, a bound method to the next one made of the same function and object.
        key = (method, url, callback)
        response = _kept.get(key)
        if response is None:
            if len(_kept) >= KEPT_RESPONSES:
                _kept.clear()
            response = _kept[key] = custom_responses_mock.CallbackResponse(method=method, url=url, callback=callback)
        else:
            response.calls.reset()
        return response

    return {(models, "CallbackResponse"): callback_response}


PATCH = MotoPatch(
    "callback_responses",
    applied_by=AppliedBy.MOCK_AWS,
    changes="each start of moto registers again the response objects the first start made for its URL "
    "patterns and HTTP methods, their record of calls emptied, instead of making ~1,300 new ones (~2.5 ms "
    "of CPU a start, four fifths of an empty one).",
    expects={"moto.core.models.CallbackResponse": "type"},
    replacements=_replacements,
)
