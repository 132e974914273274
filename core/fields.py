"""Defaults shared by the models' fields."""

from typing import Any


def empty_list() -> list[Any]:
    """A new empty list: the `default_factory` of a model's list fields, in place of `list`.

    pydantic reads a factory's signature when it builds a model (does it take the validated
    data?), and `list`'s is parsed from its text signature with `ast` each time: ~150 µs against
    ~10 µs for a function's, some 4 ms of a new API container's first `POST /orders`, which builds
    26 such fields. The JSON schema and every instance are the same."""
    return []
