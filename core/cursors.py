"""Opaque list cursors: the JSON document a list writes into one as unpadded URL-safe base64, and read back."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from core.errors import InvalidCursor


def cursor_document(cursor: str) -> Any:
    """The JSON document `cursor` holds, or InvalidCursor when it holds none: not base64, not
    UTF-8, not JSON, or nested deeper than the parser goes (json.loads raises RecursionError, no
    ValueError: 2,048 characters hold 1,536 `[`). What the document says is the list's to check."""
    try:
        return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError, binascii.Error, RecursionError):
        raise InvalidCursor() from None


def cursor_of(document: Any, *, sort_keys: bool = False) -> str:
    """The cursor holding `document`: its compact JSON as unpadded URL-safe base64, which
    cursor_document reads back (`sort_keys`: the members in key order, as the DynamoDB lists'
    cursors are written)."""
    raw = json.dumps(document, separators=(",", ":"), sort_keys=sort_keys)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
