"""Ids in paths. An id that names nothing the caller may see is 404, malformed or not (API.md):
a value that cannot be an id names nothing, exactly like a well-formed id that is unknown."""

from __future__ import annotations

import re
from typing import Annotated, Any

from aws_lambda_powertools.event_handler.openapi.params import Path
from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

from core.log_text import escape_for_log

# The validation error type of such an id; errors.py answers it with 404 not_found.
UNKNOWN_ID = "unknown_id"
_ECHOED_CHARS = 100


def existing(what: str, pattern: str, description: str) -> Any:
    """The annotation of a path parameter that must name an existing `what` ("order"). The OpenAPI
    document still shows `pattern`; a value outside it is refused as unknown, never as invalid."""
    format_ = re.compile(pattern)

    def names_something(value: str) -> str:
        if format_.fullmatch(value) is None:
            # Repeated for a person to read: a control or a bidi override in it is shown as an escape.
            shown = escape_for_log(value[:_ECHOED_CHARS])
            if value != value.strip():
                # Said, as the space is invisible at the end of "no product ERP-1 ".
                message = "no {what} {id}: it has white space before or after it"
            else:
                message = "no {what} {id}"
            raise PydanticCustomError(UNKNOWN_ID, message, {"what": what, "id": shown})
        return value

    return Annotated[
        str, Path(description=description, json_schema_extra={"pattern": pattern}), AfterValidator(names_something)
    ]
