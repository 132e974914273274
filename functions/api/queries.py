"""Query parameters many routes share: a page's `limit`, written in digits only, and its `cursor`."""

from __future__ import annotations

import re
from typing import Annotated, Any

from aws_lambda_powertools.event_handler.openapi.params import Query
from pydantic import BeforeValidator, Field
from pydantic_core import PydanticCustomError

_DIGITS = re.compile(r"[0-9]+")


def _written_in_digits(value: Any) -> Any:
    # pydantic's lax int, like Python's int(), also reads "5.0", "1_0", "+5" and " 5" as numbers.
    if isinstance(value, str) and _DIGITS.fullmatch(value) is None:
        raise PydanticCustomError("int_parsing", "Input should be a whole number written in digits")
    return value


# The range sits in a pydantic Field, not in Query(): powertools, given Query(ge=, le=) beside another
# annotation, writes `ge`/`le` into the OpenAPI document instead of `minimum`/`maximum`, so clients
# and schemathesis would read -5 as a valid limit.
Limit = Annotated[int, Field(ge=1, le=100), BeforeValidator(_written_in_digits), Query()]


def _not_empty(value: Any) -> Any:
    # A client that templates `?cursor=${next}` sends it empty for the first page: told what to do,
    # where a list reading it would call it tampered with.
    if value == "":
        raise PydanticCustomError("string_too_short", "is empty: leave cursor out to read the first page")
    return value


# The opaque cursor of a list's next page, as the page before returned it (each list checks it is
# one of its own for the same filters: 422 `invalid_cursor` otherwise).
Cursor = Annotated[str | None, BeforeValidator(_not_empty), Query(min_length=1, max_length=2048)]
