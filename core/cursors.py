"""Opaque list cursors: the JSON document a list wrote into one as unpadded URL-safe base64, read back."""

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
