"""Defaults and checks shared by the models' fields."""

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

# How an RFC 3339 time begins: a full date, then the time after "T" (or a space, as RFC 3339 allows).
RFC_3339_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ]")


def empty_list() -> list[Any]:
    """A new empty list: the `default_factory` of a model's list fields, in place of `list`.

    pydantic reads a factory's signature when it builds a model (does it take the validated
    data?), and `list`'s is parsed from its text signature with `ast` each time: ~150 µs against
    ~10 µs for a function's, some 4 ms of a new API container's first `POST /orders`, which builds
    26 such fields. The JSON schema and every instance are the same."""
    return []


def written_as_a_time(field: str, shape: str) -> Callable[[Any], Any]:
    """A before-validator for a time a client writes: text that begins as an RFC 3339 time does
    (else ValueError "`field` must be `shape`"), or a datetime, as code passes, or None. Parsed
    leniently, a number or a string of digits would be read as Unix seconds (or milliseconds): a
    moment the client never wrote."""

    def checked(sent: Any) -> Any:
        if sent is None or isinstance(sent, datetime):
            return sent
        if not isinstance(sent, str) or RFC_3339_DATE.match(sent) is None:
            raise ValueError(f"{field} must be {shape}")
        return sent

    return checked
