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

MAX_MESSAGE_CHARS = 500  # an error's message, as the import report keeps it
# An order nests 3 deep (body, lines, line). A deeper document is refused before anything walks it
# recursively (card-number checks, validation, the JSON encoder), which would overflow the stack.
MAX_JSON_DEPTH = 32

_LINE_FIELD = re.compile(r"^lines\[(\d+)\]")


class ImportFileError(Exception):
    """The file as a whole cannot be imported (unknown format, unusable CSV header): the import
    fails with this code and message, and nothing of it is captured."""

    def __init__(self, code: str, message: str):
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
        if len(self.message) > MAX_MESSAGE_CHARS:
            object.__setattr__(self, "message", self.message[: MAX_MESSAGE_CHARS - 1] + "…")


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


def nested_deeper_than(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a parsed JSON document's arrays and objects nest more than `limit` deep. Without
    recursion, so that any depth the JSON parser accepted is measured safely."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
