"""An import file as the domain sees it: orders, each with the physical lines it came from, and
errors by line. Reading a format (CSV, JSON Lines) is the import splitter's business
(functions/import_splitter/readers.py); the domain never sees a row.
"""

from __future__ import annotations

import base64
import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from core.card_numbers import mask_card_numbers, mask_optional

MAX_MESSAGE_CHARS = 500  # an error's message, as the import report keeps it
# An error's external_id, as the import report keeps it: the longest a valid one is (an Identifier).
# A cell or a JSON string can be hundreds of KB: kept whole, the error's item went over DynamoDB's
# 400 KB, and the write raised on every retry of the file's event, the rows after it never read.
MAX_EXTERNAL_ID_CHARS = 128

_LINE_FIELD = re.compile(r"^lines\[(\d+)\]")


def kept(text: str, limit: int) -> str:
    """`text` as an import keeps it: at most `limit` UTF-16 code units (an emoji is two), the last
    one "…" when it is cut. The API answers in JSON escaping all that is not ASCII, six bytes a code
    unit: a report's errors, the first 1,000 at most, then fit Lambda's 6 MB response. Counted in
    characters, 1,000 messages of 500 emoji (a file naming its orders so) were 7.5 MB: 502."""
    if len(text) <= limit and (text.isascii() or len(text.encode("utf-16-le")) <= 2 * limit):
        return text
    units = 0
    for index, character in enumerate(text):
        units += 2 if character > "\uffff" else 1
        if units > limit - 1:
            return text[:index] + "…"
    return text  # not reached: a text over the limit is cut in the loop


class ImportFileError(Exception):
    """The file as a whole cannot be imported (unknown format, unusable CSV header): the import
    fails with this code and message, and nothing of it is captured."""

    def __init__(self, code: str, message: str):
        # A header cell can carry a card number: the message is kept on the import, so it is masked.
        message = mask_card_numbers(message)
        # A header cell (named in an invalid_header message) can be 128 K characters: kept whole,
        # the import's item went over DynamoDB's 400 KB and its failure was never written.
        message = kept(message, MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class LineError:
    """Why one order of the file was not imported, on the physical line that shows it."""

    line: int
    external_id: str | None
    code: str
    message: str

    def __post_init__(self) -> None:
        # Both are kept on the import and logged for a message without one: a card number in a
        # cell (external_id included) is masked before anything keeps it.
        object.__setattr__(self, "external_id", mask_optional(self.external_id))
        object.__setattr__(self, "message", mask_card_numbers(self.message))
        object.__setattr__(self, "message", kept(self.message, MAX_MESSAGE_CHARS))
        if self.external_id is not None:
            # Cut, and shown cut: no valid external_id ends in "…", so it is never taken for one.
            object.__setattr__(self, "external_id", kept(self.external_id, MAX_EXTERNAL_ID_CHARS))


@dataclass(frozen=True)
class FileOrder:
    """One order read from a file: a POST /orders body, or the error that rejected it.

    `line` is the physical line the order starts on (a CSV header is line 1); `line_numbers[i]`
    is the physical line of the order's `lines[i]`, so an error about a line names its row."""

    line: int
    external_id: str | None
    body: dict[str, Any] | None = None
    line_numbers: tuple[int, ...] = ()
    error: LineError | None = None

    @property
    def rejected(self) -> bool:
        return self.error is not None


class FileOrders(ABC):
    """The orders of one file, in file order, as a reader makes them: iterating reads the file
    (lazily: a reader never holds it whole). Opening one may raise ImportFileError."""

    @property
    @abstractmethod
    def format(self) -> str:
        """The file's format ("csv", "jsonl"), known once the file is open."""

    @abstractmethod
    def __iter__(self) -> Iterator[FileOrder]: ...


def import_id_for(bucket: str, key: str, version: str) -> str:
    """An import's id: stable for one stored object (bucket, key and its version id, or its ETag
    in an unversioned bucket), so a redelivered S3 event finds the same import."""
    digest = hashlib.sha256(f"{bucket}\x1f{key}\x1f{version.strip(chr(34))}".encode()).digest()
    return "imp_" + base64.b32encode(digest[:15]).decode().rstrip("=").lower()


def line_of_field(field_path: str, order_line: int, line_numbers: tuple[int, ...]) -> int:
    """The physical line an error about `field_path` ("lines[2].quantity") is on: the row of that
    order line when known, else the line the order starts on."""
    match = _LINE_FIELD.match(field_path)
    if match:
        index = int(match.group(1))
        if 0 <= index < len(line_numbers):
            return line_numbers[index]
    return order_line
