"""The `response_keys` patch: moto's response serializer looks up again, for every member of every
structure it writes, which keys of the result to read it from.

moto 5.2 serializes each answer from the botocore output shape: for every member (each of the ten
members of every DynamoDB AttributeValue, for one) `ResponseSerializer.get_value` builds a context
and its `XFormedAttributePicker` instantiates six alias providers, asks each whether it has an
alias and yields it and its `xform_name`. Profiled, serializing was 44 % of moto's time in
tests/integration/test_reorder_points.py (stream records: every image's every attribute), 20 % in
test_dynamodb_adapters.py, 4-6 % in an API or import worker file. With the patch, those four files
(reorder points, DynamoDB adapters, import worker, returns API) took 90.6 s of CPU instead of
99.6 s (user+sys, medians of 3 runs; the reorder points file alone 34.8 s instead of 40.4 s).

When the result is a plain `dict` (every DynamoDB, DynamoDB Streams and SQS answer is built of them)
and the picker is moto's own (its default providers, no response transformers), the keys a member
is read from depend on the member's shape, its parent structure and its name alone: a dict has no
`Meta` and its class is always `dict`. They are computed once, by moto's own `get_possible_keys`
with the first such call's context, and kept per (shape, name) with the parent they were computed
for; the value is then the first of them the dict holds, as moto's picker reads it. Anything else
(an object result, another picker, transformers, a key with a dot, a provider that raised) goes
through moto's `get_value` unchanged.
"""

from __future__ import annotations

import threading
from typing import Any

from infra.local.moto_patches import AppliedBy, MotoPatch, Replacements

# (shape, member name) -> (the shape's parent when computed, its keys, or None for "moto's own
# path"). The shapes are those of moto's cached service models, so the same ones come back; the
# bound only keeps a process that loads many models from growing without end.
KEPT_MEMBERS = 20_000
_keys: dict[tuple[Any, str], tuple[Any, tuple[str, ...] | None]] = {}
_guard = threading.Lock()
_NO_PARENT = object()
_ABSENT = object()


def forget() -> None:
    """Drop every kept set of keys (tests)."""
    with _guard:
        _keys.clear()


def _replacements() -> Replacements:
    from moto.core.serialize import (
        DEFAULT_ALIAS_PROVIDERS,
        AttributePickerContext,
        ResponseSerializer,
        XFormedAttributePicker,
    )

    original = ResponseSerializer.__dict__["get_value"]

    def member_keys(serializer: Any, picker: Any, value: dict, key: str, shape: Any, parent: Any) -> Any:
        context = AttributePickerContext(
            obj=value,
            key=key,
            shape=shape,
            operation_model=serializer.operation_model,
            service_model=serializer.operation_model.service_model,
            key_path=".".join(serializer.path),
        )
        try:
            keys: tuple[str, ...] | None = tuple(picker.get_possible_keys(context))
        except Exception:  # moto's lazy picker might never have asked the provider that raised
            keys = None
        if keys is not None and any(not isinstance(k, str) or "." in k for k in keys):
            keys = None  # moto's get_value reads a dotted key as a path
        with _guard:
            if len(_keys) >= KEPT_MEMBERS:
                _keys.clear()
            _keys[(shape, key)] = (parent, keys)
        return keys

    def get_value(self: Any, value: Any, key: str, shape: Any) -> Any:
        picker = self._value_picker
        if (
            type(value) is not dict
            or type(picker) is not XFormedAttributePicker
            or picker.response_transformers
            or picker.alias_providers is not DEFAULT_ALIAS_PROVIDERS
            or shape is None
        ):
            return original(self, value, key, shape)
        parent = getattr(shape, "parent", _NO_PARENT)
        kept = _keys.get((shape, key))
        if kept is not None and kept[0] is parent:
            keys = kept[1]
        else:
            keys = member_keys(self, picker, value, key, shape, parent)
        if keys is None:
            return original(self, value, key, shape)
        for possible in keys:
            found = value.get(possible, _ABSENT)  # moto's get_value on a dict: value[key], or its default
            if found is not _ABSENT:
                return found
        return None

    return {(ResponseSerializer, "get_value"): get_value}


PATCH = MotoPatch(
    "response_keys",
    applied_by=AppliedBy.STACK | AppliedBy.MOCK_AWS,
    changes="moto's response serializer keeps, per output shape member, the keys its attribute picker "
    "reads a dict result's member from (computed once by moto's own picker), instead of building six "
    "alias providers for every member of every answer (up to 44 % of moto's time in a test file).",
    expects={"moto.core.serialize.ResponseSerializer.get_value": "(self, value, key, shape)"},
    replacements=_replacements,
)
