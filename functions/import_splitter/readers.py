"""Bulk import files read as a stream: CSV rows and JSON Lines become POST /orders bodies, each
with the physical line it starts on. Standard library only; nothing here holds a file.

Memory stays flat: bytes arrive in chunks, one physical line is decoded at a time (a line over
MAX_LINE_BYTES is skipped and reported, never buffered: only its first LINE_START_BYTES are kept),
and a CSV order holds at most MAX_LINES_PER_ORDER rows while it is open. What grows with the file
is one 8-byte fingerprint per closed CSV order or JSON line, kept in a set (about 70 bytes each in
CPython: a million orders take 67 MiB), so that a row reopening an order earlier in the file (or a
JSON line repeating one) is reported on its line instead of silently becoming a second, partial
order (or racing the first).
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from core import strict_json
from core.imports import FileOrder, FileOrders, ImportFileError, LineError

MAX_LINE_BYTES = 1024 * 1024  # one physical line, its ending not counted; a longer one is reported and skipped
LINE_START_BYTES = 4096  # what is kept of a line too long: enough to say whose row it is
# One CSV cell (a quoted cell may span lines): the csv module's own limit, 128 KiB unless a
# process changed it. Read, never set: the limit is global to the process.
MAX_FIELD_CHARS = csv.field_size_limit()
MAX_LINES_PER_ORDER = 100  # PlaceOrder.lines accepts at most 100

CSV = "csv"
JSONL = "jsonl"
FORMATS = (CSV, JSONL)
# A .tsv file (Google Sheets' "Tab-separated values" download) is CSV separated by tabs.
EXTENSIONS = {".csv": CSV, ".tsv": CSV, ".jsonl": JSONL, ".ndjson": JSONL, ".jsonlines": JSONL}
# Told from the content: no extension, or one that does not say which kind of JSON/text it is.
SNIFFED_EXTENSIONS = {"", ".json", ".txt"}
# What separates a CSV file's cells, told from its header: Excel saves "CSV" with the locale's list
# separator (a semicolon in much of Europe), and some exports use tabs. Commas first.
SEPARATORS = (",", ";", "\t")

# API.md's CSV columns. An empty cell is an absent field.
COLUMNS = (
    "channel",
    "external_id",
    "currency",
    "customer_id",
    "customer_email",
    "customer_name",
    "sku",
    "quantity",
    "ship_name",
    "ship_line1",
    "ship_line2",
    "ship_city",
    "ship_region",
    "ship_postal_code",
    "ship_country",
    "shipping_method",
    "payment_method",
    "payment_token",
)
# Columns a header may leave out: every cell of them would be empty, i.e. the field absent.
OPTIONAL_COLUMNS = frozenset({"customer_name", "ship_line2", "ship_region", "shipping_method"})
LINE_COLUMNS = frozenset({"sku", "quantity"})
ORDER_COLUMNS = tuple(c for c in COLUMNS if c not in LINE_COLUMNS)

# Where each order-level column goes in a POST /orders body.
_PLACEMENT = {
    "channel": ("channel",),
    "external_id": ("external_id",),
    "currency": ("currency",),
    "customer_id": ("customer", "id"),
    "customer_email": ("customer", "email"),
    "customer_name": ("customer", "name"),
    "ship_name": ("shipping_address", "name"),
    "ship_line1": ("shipping_address", "line1"),
    "ship_line2": ("shipping_address", "line2"),
    "ship_city": ("shipping_address", "city"),
    "ship_region": ("shipping_address", "region"),
    "ship_postal_code": ("shipping_address", "postal_code"),
    "ship_country": ("shipping_address", "country"),
    "shipping_method": ("shipping_method",),
    "payment_method": ("payment", "method"),
    "payment_token": ("payment", "token"),
}
_FIELD_TO_COLUMN = {".".join(path): column for column, path in _PLACEMENT.items()}
_WHOLE_NUMBER = re.compile(r"^\+?[0-9]{1,9}$")
_LINE_FIELD = re.compile(r"^lines\[(\d+)\](?:\.(\w+))?")
_LINE_END = re.compile(rb"\r\n|\r|\n")


# --- Physical lines ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PhysicalLine:
    number: int
    text: str | None  # None when unreadable: see `problem`
    problem: str | None = None  # "line_too_long" | "invalid_encoding"
    # An invalid_encoding line decoded with U+FFFD for what is not UTF-8, or the first bytes of a
    # line_too_long one: never imported, only read for whose row it is (its channel and
    # external_id are most often plain ASCII, and near the start).
    lossy: str | None = None


def physical_lines(chunks: Iterable[bytes], max_bytes: int = MAX_LINE_BYTES) -> Iterator[PhysicalLine]:
    """Lines split on "\\n", "\\r\\n" or a bare "\\r" (old Mac and some spreadsheet exports end
    lines so; each ending stays on its line for the CSV parser), numbered from 1, decoded as UTF-8
    one at a time. A byte order mark starting a line is dropped: the file's own, and those of the
    files joined after it (invisible in an editor, it would end up in the line's first cell)."""
    pending = bytearray()
    number = 0
    skipping = False  # inside a line already reported as too long
    # Where in `pending` the next search for a line ending starts: what lies before it was searched
    # and holds none (but a "\r" it stopped at, kept for the "\n" that may follow). Searching the
    # whole of a line held so far again at each chunk read a 1 MiB line in 4 KiB chunks 128 times.
    searched = 0

    def decoded(raw: bytes) -> PhysicalLine:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            lossy = raw.decode("utf-8", errors="replace").removeprefix("\ufeff")
            return PhysicalLine(number, None, "invalid_encoding", lossy=lossy)
        return PhysicalLine(number, text.removeprefix("\ufeff"))

    def too_long(start: bytes) -> PhysicalLine:
        return PhysicalLine(number, None, "line_too_long", lossy=start.decode("utf-8", errors="replace"))

    def line_end(start: int, last_chunk: bool) -> re.Match[bytes] | None:
        """The next line ending at or after `start`, or None for none yet."""
        nonlocal searched
        match = _LINE_END.search(pending, max(start, searched))
        if match is None:
            searched = len(pending)
            return None
        if match.group() == b"\r" and match.end() == len(pending) and not last_chunk:
            searched = match.start()
            return None  # the "\n" of a "\r\n" may start the next chunk
        return match

    def lines(last_chunk: bool) -> Iterator[PhysicalLine]:
        nonlocal number, skipping, searched
        start = 0
        while True:
            ending = line_end(start, last_chunk)
            if ending is None:
                break
            if skipping:
                skipping = False
            else:
                number += 1
                # The limit is on the line's content: its ending, one byte or two, is not counted,
                # so a file reads the same saved with LF or with CRLF.
                yield (
                    decoded(bytes(pending[start : ending.end()]))
                    if ending.start() - start <= max_bytes
                    else too_long(bytes(pending[start : start + LINE_START_BYTES]))
                )
            start = ending.end()
        del pending[:start]
        searched -= start
        # No ending in what is left but a "\r" last, which may be half of a "\r\n": not counted either.
        if len(pending) - int(pending.endswith(b"\r")) > max_bytes:
            if not skipping:
                number += 1
                yield too_long(bytes(pending[:LINE_START_BYTES]))
                skipping = True
            # A "\r" last may be half of the "\r\n" that ends the skipped line: it stays.
            del pending[: len(pending) - 1 if pending.endswith(b"\r") else len(pending)]
            searched = 0

    for chunk in chunks:
        pending += chunk
        yield from lines(last_chunk=False)
    yield from lines(last_chunk=True)
    if pending and not skipping:
        number += 1
        yield decoded(bytes(pending))


_UNREADABLE_MESSAGES = {
    "line_too_long": f"the line is longer than {MAX_LINE_BYTES // 1024} KiB",
    "invalid_encoding": "the line is not UTF-8 text",
}


# --- Format --------------------------------------------------------------------------------------


def extension_of(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    return "." + base.rsplit(".", 1)[-1].lower() if "." in base.strip(".") else ""


def format_from_content(first_line: str) -> str | None:
    """JSON Lines when the first non-blank line is a JSON object, CSV when it is a header naming
    channel and external_id; None otherwise."""
    if first_line.strip().startswith("{"):
        return JSONL
    return CSV if separator_of(first_line) is not None else None


def _declared_separator(line: str) -> str | None:
    """The separator a "sep=;" line names (one of SEPARATORS), or None for any other line."""
    text = line.strip("\r\n")
    if text[:4].lower() != "sep=" or text[4:] not in SEPARATORS:
        return None
    return text[4:]


def separator_of(header: str) -> str | None:
    """The first of SEPARATORS that splits `header` into cells naming channel and external_id."""
    for separator in SEPARATORS:
        try:
            cells = next(csv.reader([header.strip("\r\n")], delimiter=separator), [])
        except csv.Error:
            continue
        if {"channel", "external_id"} <= {cell.strip().lower() for cell in cells}:
            return separator
    return None


def _empty(name: str) -> ImportFileError:
    return ImportFileError(
        "empty_file",
        f"{name.rsplit('/', 1)[-1] or name} is empty (no text but blank lines): there is nothing to import",
    )


def _opens_array(first_line: str) -> bool:
    return first_line.strip().startswith("[")


def _json_array() -> ImportFileError:
    return ImportFileError(
        "unknown_format", "a JSON array cannot be imported: send JSON Lines, one order object per line"
    )


def _unknown_format(name: str, extension: str, first_line: str | None) -> ImportFileError:
    if extension and extension not in SNIFFED_EXTENSIONS:
        return ImportFileError(
            "unknown_format", f"{extension} files cannot be imported: send CSV (.csv) or JSON Lines (.jsonl)"
        )
    if first_line is not None and _opens_array(first_line):
        return _json_array()
    what = (
        "no line of text at its start"
        if first_line is None
        else "neither a CSV header with channel and external_id nor JSON"
    )
    return ImportFileError(
        "unknown_format", f"cannot tell the format of {name.rsplit('/', 1)[-1] or name}: {what} (send .csv or .jsonl)"
    )


GZIP_MAGIC = b"\x1f\x8b"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")  # little and big endian byte order marks
# Little and big endian: UTF-32LE's starts with UTF-16LE's, so it is looked for first.
UTF32_BOMS = (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")
HEAD_BYTES = 4  # what tells gzip, UTF-32 and UTF-16 from UTF-8


def _wide_encoding(head: bytes) -> str | None:
    """Which of UTF-32 and UTF-16 the file is in, when its first bytes (`head`) show one: its
    byte order mark, or without one (as `iconv -t UTF-16LE` writes it) the NUL bytes beside the
    ASCII character that starts any header or JSON line (three in UTF-32, one in UTF-16). No UTF-8
    import file starts with a NUL, or has one second. None for any other file."""
    if head.startswith(UTF32_BOMS) or (
        len(head) >= HEAD_BYTES and (head[0] == 0) != (head[3] == 0) and head[1:3] == b"\x00\x00"
    ):
        return "UTF-32"
    if head.startswith(UTF16_BOMS) or (len(head) >= 2 and (head[0] == 0) != (head[1] == 0)):
        return "UTF-16"
    return None


def _plain_text(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The chunks as they are, once the first bytes show they are neither gzip nor UTF-32 nor
    UTF-16: read as UTF-8 text, any of them would be lines of junk, each reported as an order."""
    iterator = iter(chunks)
    head = b""
    for chunk in iterator:
        head += chunk
        if len(head) >= HEAD_BYTES:
            break
    if head.startswith(GZIP_MAGIC):
        raise ImportFileError("unknown_format", "a gzip file cannot be imported: send it uncompressed (.csv or .jsonl)")
    # Read as UTF-8, every line of it is unreadable (or its header's names and every JSON line are
    # spelt with NULs): the file is refused once, saying why.
    encoding = _wide_encoding(head)
    if encoding is not None:
        raise ImportFileError("invalid_encoding", f"the file is {encoding} text: save it as UTF-8 and send it again")
    return itertools.chain([head], iterator)


class OrderFile(FileOrders):
    """The orders of one file, read lazily: `format` is known on construction (it may read ahead
    to the first non-blank line), then iterating yields a FileOrder per order.

    Raises ImportFileError on construction for an empty file, an unknown format or an unusable
    CSV header."""

    def __init__(self, chunks: Iterable[bytes], name: str):
        self._lines = physical_lines(_plain_text(chunks))
        self._peeked: list[PhysicalLine] = []
        extension = extension_of(name)
        fmt = EXTENSIONS.get(extension)
        if fmt is None and extension not in SNIFFED_EXTENSIONS:
            raise _unknown_format(name, extension, None)
        # Read ahead: a CSV file's first line for its separator, a file named neither way's for its
        # format, any file's for whether there is anything in it at all.
        first = self._first_text_line(past_unreadable=fmt != JSONL)
        # A file written for Excel may name its separator on a line of its own before the header.
        declared = _declared_separator(first) if fmt != JSONL and first is not None else None
        if declared is not None:
            self._peeked = []
            first = self._first_text_line(past_unreadable=True)
        nothing = first is None and len(self._peeked) <= 1000 and all(line.text is not None for line in self._peeked)
        if nothing and fmt != JSONL:
            # No header, so no CSV: most likely an export or an upload that failed, never "0 orders".
            # An empty JSON Lines file is how a feed says it has no orders today (a CSV says it with
            # its header alone): an import of 0 orders.
            raise _empty(name)
        if fmt is None:
            fmt = format_from_content(first) if first is not None else None
            if fmt is None:
                raise _unknown_format(name, extension, first)
        if fmt == JSONL and first is not None and _opens_array(first):
            # A JSON document named .jsonl: line by line, its orders would be imported one in many.
            raise _json_array()
        if fmt == JSONL and first is not None and separator_of(first) is not None:
            # A CSV file: read as JSON Lines, its header and every row would each fail as a line of
            # bad JSON. No JSON line, and no order object cut short (it opens with "{"), has cells
            # named channel and external_id: a bad JSON line stays its line's error.
            raise ImportFileError(
                "unknown_format",
                f"{name.rsplit('/', 1)[-1] or name} is CSV, not JSON Lines: its line {self._peeked[-1].number} is a "
                "CSV header naming channel and external_id (name the file .csv, or send each order as a JSON "
                "object on a line of its own)",
            )
        if fmt == JSONL and first is not None and first.strip() == "{":
            # Pretty-printed: every line of every order would be an error of its own.
            raise ImportFileError(
                "unknown_format",
                f"the orders are written over several lines each (line {self._peeked[-1].number} opens one "
                "and does not close it): send JSON Lines, each order object on one line",
            )
        self._format = fmt
        lines = self._replayed()
        if fmt == CSV:
            # The header is checked now, so that an unusable one fails the file before any order.
            rows = _CsvRowReader(lines, declared or (separator_of(first) if first is not None else None) or ",").rows()
            header = next(rows, None)
            if header is None:  # only rows of empty cells
                raise _empty(name)
            self._orders = _CsvOrderReader(_header(header), header.line).orders(rows)
        else:
            self._orders = _jsonl_orders(lines)

    def _first_text_line(self, past_unreadable: bool) -> str | None:
        """The first line that is not blank, or None; an unreadable line stops the search unless
        `past_unreadable`."""
        for line in self._lines:
            if line.text is not None and line.text.strip():
                self._peeked.append(line)
                return line.text
            # Held until replayed (up to 1,000 of them), so not whole: a blank line is skipped, and
            # an unreadable one is reported without its text (read for whose row it is, which no
            # line before a CSV header is, nor any JSON line).
            held = replace(line, text="\n") if line.text is not None else replace(line, lossy=None)
            self._peeked.append(held)
            if line.text is None and not past_unreadable:
                return None
            if len(self._peeked) > 1000:  # blank or unreadable as far as we looked
                return None
        return None

    def _replayed(self) -> Iterator[PhysicalLine]:
        yield from self._peeked
        self._peeked = []
        yield from self._lines

    @property
    def format(self) -> str:
        return self._format

    def __iter__(self) -> Iterator[FileOrder]:
        return self._orders


def read_orders(chunks: Iterable[bytes], name: str) -> OrderFile:
    return OrderFile(chunks, name)


# --- JSON Lines ----------------------------------------------------------------------------------


def _jsonl_orders(lines: Iterator[PhysicalLine]) -> Iterator[FileOrder]:
    # The fingerprints of the orders read so far. A line repeating one is an error: queued, the two
    # lines race through the workers, and whichever is captured first would be the order.
    seen: set[int] = set()
    for line in lines:
        if line.text is None:
            yield _unreadable(line, None)
            continue
        if not line.text.strip():
            continue
        try:
            # The rules of POST /orders bodies: a line nested past them would raise, not fail alone.
            body = strict_json.loads(line.text, top_level_object=False)
        except strict_json.StrictJsonError as error:
            before_comma = _object_before_comma(line.text)
            if before_comma is None:
                problem = LineError(line.number, None, "malformed_json", f"the line {error}")
            else:
                external_id = before_comma.get("external_id")
                external_id = external_id if isinstance(external_id, str) else None
                message = (
                    "the line has a comma after its object: JSON Lines puts one object on each line, with no comma"
                )
                problem = LineError(line.number, external_id, "malformed_json", message)
            yield FileOrder(line.number, problem.external_id, error=problem)
            continue
        if _SURROGATE_ESCAPE.search(line.text) and _has_lone_surrogate(body):
            # Half a character is no text: as a channel or external_id it stopped the whole file
            # where the order is fingerprinted, and nothing could store it.
            message = "the line has a \\u escape of half a character (a lone surrogate), which is not text"
            yield FileOrder(line.number, None, error=LineError(line.number, None, "malformed_json", message))
            continue
        if not isinstance(body, dict):
            yield FileOrder(
                line.number,
                None,
                error=LineError(line.number, None, "malformed_json", "each line must be one JSON object (an order)"),
            )
            continue
        external_id = body.get("external_id")
        external_id = external_id if isinstance(external_id, str) else None
        channel = body.get("channel")
        if isinstance(channel, str) and channel and external_id:
            fingerprint = _fingerprint((channel, external_id))
            if fingerprint in seen:
                message = (
                    f"order {channel}/{external_id} is on an earlier line of this file: "
                    "an order is imported from its first line only"
                )
                yield FileOrder(
                    line.number, external_id, error=LineError(line.number, external_id, "order_repeated", message)
                )
                continue
            seen.add(fingerprint)
        lines_in_body = body.get("lines")
        count = len(lines_in_body) if isinstance(lines_in_body, list) else 0
        yield FileOrder(line.number, external_id, body, (line.number,) * count)


# A \u escape of a UTF-16 surrogate (D800-DFFF), half of an emoji's pair or half alone: only a
# line with one is checked whole (an accented letter's escape, json.dumps' default, is not).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(document: Any) -> bool:
    """Whether a string of a parsed JSON document, key or value, holds half a UTF-16 pair (JSON
    reads "\\ud800" as one; UTF-8 has no way to write it)."""
    try:
        json.dumps(document, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    return False


def _object_before_comma(text: str) -> dict[str, Any] | None:
    """The object of a line that is an object and a comma (a JSON array's items, one a line,
    without its brackets), or None for any other line."""
    stripped = text.strip()
    if not stripped.endswith(","):
        return None
    try:
        return strict_json.loads(stripped[:-1])
    except strict_json.StrictJsonError:
        return None


def _unreadable(line: PhysicalLine, external_id: str | None) -> FileOrder:
    code = line.problem or "unreadable_line"
    error = LineError(line.number, external_id, code, _UNREADABLE_MESSAGES.get(code, "the line cannot be read"))
    return FileOrder(line.number, external_id, error=error)


# --- CSV -----------------------------------------------------------------------------------------


class _Unreadable(Exception):
    def __init__(self, line: PhysicalLine):
        self.line = line


class _Feed:
    """The text lines the csv module parses. It keeps the lines of the record being parsed, so
    that a record found broken can be reported on its first line and the lines after that one
    parsed again (at most one record's lines are held: a cell stops at MAX_FIELD_CHARS)."""

    def __init__(self, lines: Iterator[PhysicalLine]):
        self._lines = lines
        self._replay: deque[PhysicalLine] = deque()
        self.record: list[PhysicalLine] = []
        # The file ended while the csv module was reading a record: it asks for a line past a
        # record's last only inside a quoted cell, so the record it then hands on is cut.
        self.ran_out = False
        self.rereading = False

    def __iter__(self) -> _Feed:
        return self

    def __next__(self) -> str:
        # A line parsed again after a broken record may be inside that record's quoted cell.
        self.rereading = bool(self._replay)
        if self._replay:
            line = self._replay.popleft()
        else:
            try:
                line = next(self._lines)
            except StopIteration:
                self.ran_out = True
                raise
        self.record.append(line)
        if line.text is None:
            raise _Unreadable(line)
        return line.text

    def begin_record(self) -> None:
        self.record = []

    def reread_all(self) -> None:
        """Parse again every line of the current record."""
        self._replay.extendleft(reversed(self.record))
        self.record = []

    def reread_after_first(self) -> None:
        """Parse again every line of the current record but its first."""
        self._replay.extendleft(reversed(self.record[1:]))
        self.record = self.record[:1]


@dataclass
class _Row:
    line: int
    cells: list[str] | None = None  # None: the row could not be parsed (see error)
    error: LineError | None = None
    lines: int = 1  # physical lines the record spans (a quoted cell may hold line breaks)
    lossy_cells: list[str] | None = None  # a row that is not UTF-8, read lossily: see PhysicalLine
    # A broken record (cells None): the cells its first line shows whole, up to where it breaks.
    leading_cells: list[str] | None = None
    header: bool = False  # the cells name the columns (a header, maybe of a file joined on)


class _CsvRowReader:
    """Parsed records of a CSV file, each with the physical line it starts on; blank lines are
    skipped. `rows` parses a record at a time and hands it to the method for its kind, which
    returns its row, or None for a record that is no row:

    - a record the csv module cannot hand on: a line that cannot be read (_unreadable_line), a
      quoted cell running on into one (_cut_by_unreadable_line), a cell over MAX_FIELD_CHARS
      (_refused);
    - a record the file ends inside (_cut_short): cut short (an upload interrupted), an error on
      its first line;
    - a record spanning lines that holds a line that is a row on its own (see _rows_resume), the
      file ending inside it or not, unless it has the header's number of cells and quotes as a
      CSV writer does (see _quoted_as_written): a quote never closed, or closed only by a quote
      in a later row (_unclosed). A record spanning lines with the wrong number of cells and no
      row inside is one row, and is handed on as read;
    - a header further on (files joined together), which sets the number of cells, and the
      separator, of the rows after it (_header_spanning_lines, _header_separated_otherwise); a
      "sep=;" line further on, which sets the separator and is no row (_names_separator).

    A broken record becomes an error on its first line (with the cells that line shows whole,
    which may say whose row it is), and the lines after that one are parsed again with a fresh
    parser, so that one bad line costs only its own row.

    The state the methods share:
    - `feed`: the lines, holding those of the record being parsed (see _Feed).
    - `separator`: the file's, or that of a header or "sep=;" line further on.
    - `width`: the header's number of cells; None until the header is read.
    - `parser`: the csv module's reader of `feed` by `separator`: a fresh one after a broken
      record (the old one is mid-record) or a change of separator.
    """

    def __init__(self, lines: Iterator[PhysicalLine], separator: str):
        self.feed = _Feed(lines)
        self.separator = separator
        self.width: int | None = None
        self.parser = csv.reader(self.feed, delimiter=separator, strict=False)

    def rows(self) -> Iterator[_Row]:
        while True:
            self.feed.begin_record()
            try:
                cells = next(self.parser)
            except StopIteration:
                return
            except _Unreadable as unreadable:
                if len(self.feed.record) == 1:
                    row = self._unreadable_line(unreadable.line)
                else:
                    row = self._cut_by_unreadable_line(unreadable.line)
            except csv.Error as error:
                row = self._refused(error)
            else:
                row = self._record(cells)
            if row is not None:
                yield row

    def _restart(self, separator: str | None = None) -> None:
        """A fresh parser (the csv module's is mid-record after a broken one), by `separator` from
        now on if given."""
        self.separator = separator or self.separator
        self.parser = csv.reader(self.feed, delimiter=self.separator, strict=False)

    def _resume_after_first(self) -> None:
        """The lines of a broken record after its first are parsed again, each maybe a row."""
        self.feed.reread_after_first()
        self._restart()

    # --- Records the csv module cannot hand on ---

    def _unreadable_line(self, line: PhysicalLine) -> _Row:
        """A line not UTF-8 or too long, which starts its record."""
        lossy_cells = _lossy_cells(line, self.separator)
        joined = _lossy_header(line, self.separator, lossy_cells) if self.width is not None else None
        if joined is not None:
            # The header of a file joined on, not UTF-8 (a Latin-1 export): still a header.
            self.separator, lossy_cells = joined
            self.width = len(lossy_cells)
        row = _Row(
            line.number,
            error=_unreadable(line, None).error,
            lossy_cells=lossy_cells,
            leading_cells=(
                _leading_cells(line, self.separator)
                if line.problem == "line_too_long" or (not self.feed.rereading and _opens_quote(line, self.separator))
                else None
            ),
            header=joined is not None,
        )
        self._restart()
        return row

    def _cut_by_unreadable_line(self, line: PhysicalLine) -> _Row:
        """A record whose quoted cell runs on into a line not UTF-8 or too long."""
        first = self.feed.record[0]
        joined = _joined_header(first, self.separator) if self.width is not None else None
        if joined is not None:
            # A header further on whose quote runs on into a line not UTF-8: one that cannot
            # be used (_CsvOrderReader), as when it runs on into rows; not an order row, with the
            # rows after it read by line 1's columns.
            row = _Row(first.number, cells=joined, lines=len(self.feed.record), header=True)
        else:
            message = f"the row is cut by line {line.number}, which cannot be read"
            row = _Row(
                first.number,
                error=LineError(first.number, None, "malformed_row", message),
                leading_cells=_leading_cells(first, self.separator),
            )
        self._resume_after_first()
        return row

    def _refused(self, error: csv.Error) -> _Row:
        """A record the csv module refuses: a cell over MAX_FIELD_CHARS, most often."""
        first = self.feed.record[0]
        message = str(error)
        code = "field_too_large" if "field larger than field limit" in message else "malformed_row"
        if code == "field_too_large":
            message = f"a cell is longer than {MAX_FIELD_CHARS // 1024} KiB (or a quote is never closed)"
        row = _Row(
            first.number,
            error=LineError(first.number, None, code, message),
            leading_cells=_leading_cells(first, self.separator),
        )
        self._resume_after_first()
        return row

    # --- Records parsed ---

    def _record(self, cells: list[str]) -> _Row | None:
        """A record the csv module parsed: a row, a header further on, or no row (a blank one, a
        "sep=;" line, a header it parses again by its own separator)."""
        if not any(cell.strip() for cell in cells):
            return None  # a blank line, or a row of empty cells as spreadsheets export them
        if self.feed.ran_out:
            return self._cut_short(cells)
        spanned = len(self.feed.record)
        text = self.feed.record[0].text or ""
        # Only a line naming external_id may be a header: the cells of other rows are not looked at.
        may_be_header = "external_id" in text.lower()
        header = may_be_header and _is_header(cells)
        if self.width is None:
            # The file's header (OrderFile checks it): its cells set the number of the rows'.
            self.width = len(cells)
            return _Row(self.feed.record[0].number, cells=cells, lines=spanned, header=header)
        if spanned == 1 and len(cells) <= 2 and text[:4].lower() == "sep=" and self._names_separator(text):
            return None
        if header and spanned > 1:
            return self._header_spanning_lines(cells)
        if spanned == 1 and may_be_header and not header:
            split = self._header_separated_otherwise(text)
            if split is not None:
                if _quote_runs_on(text, self.separator):
                    # A quoted cell of it runs on past its line: parsed again by its separator,
                    # with the lines it runs on to (read alone, the next line would open a cell
                    # swallowing the rows after it).
                    self.feed.reread_all()
                    return None
                cells, header = split, True
        if header:
            self.width = len(cells)  # that of a header further on (files joined together)
        elif (
            spanned > 1
            and not (len(cells) == self.width and _quoted_as_written(self.feed.record, self.separator))
            and _rows_resume(self.feed.record, self.separator, self.width)
        ):
            return self._unclosed(cells)
        return _Row(self.feed.record[0].number, cells=cells, lines=spanned, header=header)

    def _cut_short(self, cells: list[str]) -> _Row:
        """The file ends inside a quoted cell (an upload cut short): the csv module hands on the
        cut value as if it were whole. The row is an error; rows its quote swallowed are read."""
        self.feed.ran_out = False
        start, spanned = self.feed.record[0].number, len(self.feed.record)
        if self.width is not None and spanned > 1 and _rows_resume(self.feed.record, self.separator, self.width):
            return self._unclosed(cells)
        runs_on = f" (it runs on to line {start + spanned - 1})" if spanned > 1 else ""
        message = (
            f"the file ends inside a quoted cell of this row{runs_on}, whose quote is never closed: "
            "the file looks cut short (an upload interrupted?), so the row is not imported"
        )
        return _Row(
            start,
            error=LineError(start, None, "malformed_row", message),
            leading_cells=_leading_cells(self.feed.record[0], self.separator),
        )

    def _unclosed(self, cells: list[str]) -> _Row:
        """A record whose quote swallowed rows: an error on its first line (see _unclosed_quote),
        and the lines after that one are parsed again."""
        assert self.width is not None
        first, spanned = self.feed.record[0], len(self.feed.record)
        row = _unclosed_quote(first.number, len(cells), spanned, self.width, first, self.separator)
        self._resume_after_first()
        return row

    def _names_separator(self, text: str) -> bool:
        """Whether a line is a "sep=;" line (a file written for Excel joined on): as at the top of
        the file, it names the separator of the rows after it (the header that follows says the
        files were joined)."""
        declared = _declared_separator(text)
        if declared is None:
            return False
        if declared != self.separator:
            self._restart(declared)
        return True

    def _header_spanning_lines(self, cells: list[str]) -> _Row:
        """A header further on with a line break in a cell (as a header on line 1 has: that file
        fails): it cannot be used (_CsvOrderReader), and the rows after it are not read by line
        1's columns; nor are those its quote swallowed, read again (_unclosed_quote)."""
        assert self.width is not None
        if not _quoted_as_written(self.feed.record, self.separator) and _rows_resume(
            self.feed.record, self.separator, self.width
        ):
            return self._unclosed(cells)
        self.width = len(cells)
        return _Row(self.feed.record[0].number, cells=cells, lines=len(self.feed.record), header=True)

    def _header_separated_otherwise(self, text: str) -> list[str] | None:
        """The cells of a header of a file joined after the first, which separates its cells
        otherwise (one export by commas, one by semicolons): it and the rows after it are read by
        its own separator, from now on. None for any other line."""
        other = separator_of(text)
        if other is None or other == self.separator:
            return None
        split = next(csv.reader([text], delimiter=other, strict=False))
        if not _is_header(split):
            return None
        self._restart(other)
        return split


def _unclosed_quote(start: int, cells: int, spanned: int, width: int, first: PhysicalLine, separator: str) -> _Row:
    joined = _joined_header(first, separator)
    if joined is not None:
        # A header further on (files joined together) whose quote is not closed on its line: one
        # that cannot be used (_CsvOrderReader). The rows its quote swallowed, read again, are under it,
        # not read by the columns of the header before it.
        return _Row(start, cells=joined, lines=spanned, header=True)
    # Its number of cells may be the header's: a quote in the same column of a later row closes it.
    counted = (
        f"{cells} cells over {spanned} lines where the header has {width}"
        if cells != width
        else f"it runs on to line {start + spanned - 1}, over rows of their own"
    )
    message = (
        f"a quote opened on this line is not closed where its row ends ({counted}); the lines after it are read as rows"
    )
    return _Row(
        start,
        error=LineError(start, None, "unclosed_quote", message),
        leading_cells=_leading_cells(first, separator),
    )


def _joined_header(first: PhysicalLine, separator: str) -> list[str] | None:
    """The cells a broken record's first line shows whole, when that line is a header further on
    (files joined together) whose quote is not closed on it; None for an order row. The cells after
    the quote are looked at too, as if it were not there: an order's quantity may be among them (a
    row whose cells before it name channel and external_id is an order all the same)."""
    if "external_id" not in (first.text or "").lower():
        return None
    joined = _leading_cells(first, separator)
    if not joined or not _is_header(joined):
        return None
    unquoted = next(csv.reader([(first.text or "").strip("\r\n")], delimiter=separator, quoting=csv.QUOTE_NONE))
    return joined if _is_header([cell.strip('"') for cell in unquoted]) else None


def _quoted_as_written(record: list[PhysicalLine], separator: str) -> bool:
    """Whether every quoted cell of a record spanning lines is closed by a quote right before a
    separator or the end of a line, as a spreadsheet or any CSV writer closes one. A quote never
    closed, or closed only by a quote a later row opens a cell with, is followed by that cell's
    text; a line of a quoted cell may read as a row (it starts with the channel, or holds as many
    separators), so only a record quoted otherwise is looked into for rows (see _rows_resume)."""
    try:
        next(csv.reader((line.text or "" for line in record), delimiter=separator, strict=True))
    except csv.Error:
        return False
    return True


def _rows_resume(record: list[PhysicalLine], separator: str, width: int) -> bool:
    """Whether any of the lines after a record's first is a row on its own (of the header's width,
    or starting with the first line's first cell, its channel most often, as rows of a file do):
    then the record's quote was never closed, or closed only by a quote in a later row, and
    swallowed rows. Otherwise it is one row whose quoted cell holds line breaks (with a cell too
    many or too few, maybe)."""
    first = record[0].text or ""
    end = first.find(separator)
    lead = first[: end + 1] if end > 0 and '"' not in first[:end] else None
    for line in record[1:]:
        if line.text is None or not line.text.strip():
            continue
        if lead is not None and line.text.startswith(lead):
            return True
        try:
            cells = next(csv.reader([line.text], delimiter=separator, strict=False), [])
        except csv.Error:
            continue
        if len(cells) == width:
            return True
    return False


def _lossy_cells(line: PhysicalLine, separator: str) -> list[str] | None:
    """The cells of a one-line row that is not UTF-8, or None if they cannot be told."""
    if line.lossy is None or line.problem != "invalid_encoding":
        return None
    try:
        return next(csv.reader([line.lossy], delimiter=separator, strict=False), None)
    except csv.Error:
        return None


def _opens_quote(line: PhysicalLine, separator: str) -> bool:
    """Whether a line not UTF-8, read lossily, opens a quote it does not close (a line break in a
    quoted cell): its row goes on past it, and only its leading cells say whose row it is."""
    return line.lossy is not None and _quote_runs_on(line.lossy, separator)


def _quote_runs_on(text: str, separator: str) -> bool:
    """Whether a line opens a quote it does not close: its record goes on past it."""
    asked_on = False

    def one_line() -> Iterator[str]:
        nonlocal asked_on
        yield text
        asked_on = True  # the csv module reads on past a line only inside a quoted cell

    try:
        next(csv.reader(one_line(), delimiter=separator, strict=False), None)
    except csv.Error:
        return False
    return asked_on


def _lossy_header(line: PhysicalLine, separator: str, cells: list[str] | None) -> tuple[str, list[str]] | None:
    """The separator and cells of a line that is not UTF-8 but, read lossily, is a CSV header (by
    `separator` or another); None for any other line."""
    if line.lossy is None or "external_id" not in line.lossy.lower():
        return None
    if cells is not None and _is_header(cells):
        return separator, cells
    other = separator_of(line.lossy)
    if other is None or other == separator:
        return None
    cells = next(csv.reader([line.lossy], delimiter=other, strict=False), None)
    return (other, cells) if cells is not None and _is_header(cells) else None


def _leading_cells(line: PhysicalLine, separator: str) -> list[str] | None:
    """The cells a broken record's first line shows whole: every cell before its last, which is
    the one the break may cut (a quote opened and never closed, a cell over the limit, the end of
    what is kept of a line too long)."""
    text = line.text if line.text is not None else line.lossy
    if text is None:
        return None
    try:
        cells = next(csv.reader([text[:LINE_START_BYTES]], delimiter=separator, strict=False), None)
    except csv.Error:
        return None
    return cells[:-1] if cells else None


def _header(row: _Row) -> list[str]:
    if row.cells is None:
        if row.error is not None and row.error.code == "invalid_encoding":
            raise ImportFileError(
                "invalid_encoding",
                f"the CSV header on line {row.line} is not UTF-8 text: save the file as UTF-8 "
                "(in Excel: CSV UTF-8) and send it again",
            )
        raise ImportFileError("invalid_header", f"the CSV header on line {row.line} cannot be read")
    if row.lines > 1:
        # Every row after it would be read against a header that swallowed them: nothing to recover.
        raise ImportFileError(
            "invalid_header",
            f"the CSV header on line {row.line} opens a quote that is not closed on its line "
            f"(it runs on to line {row.line + row.lines - 1})",
        )
    names = _column_names(row.cells)
    problems = _header_problems(names)
    if problems:
        raise ImportFileError(
            "invalid_header",
            f"the CSV header on line {row.line} must name the import columns ({problems}); "
            f"columns: {', '.join(COLUMNS)}",
        )
    return names


def _column_names(cells: list[str]) -> list[str]:
    return [cell.strip().lower() for cell in cells]


def _is_header(cells: list[str]) -> bool:
    """Whether a row names the columns rather than an order: it names channel and external_id (as
    a header tells a separator), and no cell of it is a whole number, as an order's quantity is and
    a column's name never. An order may have cells that are column names (external_id
    "external_id", a customer named "Channel")."""
    names = set(_column_names(cells))
    return {"channel", "external_id"} <= names and not any(_WHOLE_NUMBER.match(name) for name in names)


def _header_problems(names: list[str]) -> str | None:
    """What keeps header `names` from naming the import columns, or None."""
    # An empty name is a column the header does not name: spreadsheets save one more empty cell per
    # line for a column that once held formatting. Its cells must stay empty (see _CsvOrderReader).
    unknown = [name for name in names if name and name not in COLUMNS]
    repeated = sorted({name for name in names if name and names.count(name) > 1})
    missing = [c for c in COLUMNS if c not in names and c not in OPTIONAL_COLUMNS]
    problems = []
    if missing:
        problems.append("missing " + ", ".join(missing))
    if unknown:
        problems.append("unknown " + ", ".join(unknown[:10]))
    if repeated:
        problems.append("repeated " + ", ".join(repeated))
    return "; ".join(problems) or None


def _fingerprint(key: tuple[str, str]) -> int:
    """An order's channel + external_id in 8 bytes: what a CSV file keeps of each order it has
    finished. Two orders share one with probability ~n²/2⁶⁵, negligible for any real file."""
    return int.from_bytes(hashlib.blake2b("\x1f".join(key).encode(), digest_size=8).digest(), "big")


@dataclass
class _OpenOrder:
    key: tuple[str, str]
    line: int
    order_cells: dict[str, str]
    lines: list[dict[str, Any]] = field(default_factory=list)
    line_numbers: list[int] = field(default_factory=list)
    rows: int = 0
    error: LineError | None = None
    more_errors: int = 0

    def reject(self, error: LineError) -> None:
        if self.error is None:
            self.error = error
        else:
            self.more_errors += 1

    def fail_row(self, error: LineError) -> None:
        """A row of the order that cannot be imported: the order is not, without it."""
        self.rows += 1
        self.reject(error)

    def differing_column(self, cells: dict[str, str]) -> str | None:
        """The first order column a later row gives another value than the first row did; an
        empty cell differs from nothing (a later row may leave the order's cells empty)."""
        for column in ORDER_COLUMNS:
            value = cells.get(column, "")
            if value and value != self.order_cells.get(column, value):
                return column
        return None

    def closed(self) -> FileOrder:
        external_id = self.key[1]
        if self.error is not None:
            error = self.error
            if self.more_errors:
                more = f" (and {self.more_errors} more problem{'s' if self.more_errors > 1 else ''} in this order)"
                error = LineError(error.line, error.external_id, error.code, error.message + more)
            return FileOrder(self.line, external_id, error=error)
        return FileOrder(self.line, external_id, _body(self.order_cells, self.lines), tuple(self.line_numbers))


def _body(cells: dict[str, str], lines: list[dict[str, Any]]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for column, path in _PLACEMENT.items():
        value = cells.get(column, "")
        if not value:
            continue  # an empty cell is an absent field
        if len(path) == 1:
            body[path[0]] = value
        else:
            body.setdefault(path[0], {})[path[1]] = value
    body["lines"] = lines
    return body


def _order_line(cells: dict[str, str], line: int, external_id: str) -> tuple[dict[str, Any], LineError | None]:
    order_line: dict[str, Any] = {}
    if cells.get("sku"):
        order_line["sku"] = cells["sku"]
    quantity = cells.get("quantity", "")
    if quantity:
        if not _WHOLE_NUMBER.match(quantity):
            message = "quantity must be a positive whole number written in digits"
            return order_line, LineError(line, external_id, "invalid_number", message)
        order_line["quantity"] = int(quantity)
    return order_line, None


class _CsvOrderReader:
    """The orders of a CSV file's rows (after its header), read one row at a time: rows sharing a
    channel and external_id, one after the other, are one order. Each kind of row has its method;
    a row finishes at most one order (the open one, when the row starts the next), which the
    method returns. The state they share is the reader's attributes:

    - `names`, `width`, `unnamed`, `header_line`: the header in use (the first line's, or one
      further on: files joined together), its number of cells, the columns it gives no name (their
      cells must stay empty), and its line.
    - `unusable_header`, `unusable_names`: a header further on that cannot be used: its line,
      None once a header that can be used follows, and the names it gives (whose row a row under
      it is).
    - `unread`, `unread_at`: the last order reported under such a header, with the line it was
      reported on (its rows may go on under a header that can be used).
    - `closed`: the fingerprints of the orders finished so far.
    - `current`: the open order.
    - `unreadable`: the first row since the open order's last row whose order cannot be told. The
      rows of one order are adjacent, so if the order goes on after it, the row was one of its
      own: imported without it, the order would be short.
    - `nameless`: the line and external_id of a row right before that names an order without its
      channel: if that order starts after it, the row was its first.
    """

    def __init__(self, names: list[str], header_line: int):
        self.names: list[str] = []
        self.width = 0
        self.unnamed: list[int] = []
        self._use_header(names)
        self.header_line = header_line
        self.unusable_header: int | None = None
        self.unusable_names: list[str] = []
        self.unread: tuple[str, str] | None = None
        self.unread_at = 0
        self.closed: set[int] = set()
        self.current: _OpenOrder | None = None
        self.unreadable: LineError | None = None
        self.nameless: tuple[int, str] | None = None

    def orders(self, rows: Iterator[_Row]) -> Iterator[FileOrder]:
        for row in rows:
            finished = self._read(row)
            if finished is not None:
                yield finished
        if self.current is not None:  # the end of the file closes the open order
            yield self.current.closed()

    def _read(self, row: _Row) -> FileOrder | None:
        """The row handed to the method for its kind: the order it finishes, if any."""
        if row.header:
            return self._header_not_utf8(row) if row.cells is None else self._header_again(row)
        if self.unusable_header is not None:
            return self._row_under_unusable_header(row)
        identity = _identity(row, self.names)
        if identity is not None:
            return self._broken_row_of(identity, row)
        if row.cells is None:
            return self._unreadable_row(row)
        cells = {name: value.strip() for name, value in zip(self.names, row.cells, strict=False)}
        channel, external_id = cells.get("channel", ""), cells.get("external_id", "")
        if not channel or not external_id:
            return self._nameless_row(row, channel, external_id)
        return self._order_row(row, cells, (channel, external_id))

    # --- Headers further on (files joined together) ---

    def _header_not_utf8(self, row: _Row) -> FileOrder:
        """A joined file's header that is not UTF-8: its rows are most likely not UTF-8 either,
        and what it names cannot be told for sure. Said once here, with what to do; the rows
        under it are not read, as under any header that cannot be used."""
        message = (
            "this line is a CSV header again (files joined together?), and is not UTF-8 text: the rows "
            "after it are not read, up to a header that can be; save that file as UTF-8 (in Excel: CSV "
            "UTF-8) and import again (orders already imported are not imported twice)"
        )
        self._stop_reading(row.line, _column_names(row.lossy_cells or []))
        return FileOrder(row.line, None, error=LineError(row.line, None, "invalid_encoding", message))

    def _header_again(self, row: _Row) -> FileOrder:
        """Two exports joined into one file: the second's header is no order. The rows on either
        side are read as if it were not there (an order they share stays one order), those after
        it by its columns."""
        assert row.cells is not None
        again = _column_names(row.cells)
        problems = "a quote opened on it is not closed on its line" if row.lines > 1 else _header_problems(again)
        if problems is not None:
            message = (
                f"this line is a CSV header again, and cannot be used ({problems}): the rows after it "
                "are not read, up to a header that can be"
            )
            # The open order stays open, as across a header that can be used: its rows may go on
            # under a header that can be further on, and closed now it would be imported short.
            self._stop_reading(row.line, again)
            return FileOrder(row.line, None, error=LineError(row.line, None, "invalid_header", message))
        if _same_columns(again, self.names):
            message = f"this line repeats the CSV header of line {self.header_line} (files joined together?)"
        else:
            message = (
                f"this line is a CSV header with other columns than the header of line {self.header_line} "
                "(files joined together?)"
            )
            self.header_line = row.line
        # Taken even when it names the same columns: it may end in more or fewer empty cells.
        self._use_header(again)
        self.unusable_header = None
        message += ": it is skipped, and the rows after it are read by its columns"
        return FileOrder(row.line, None, error=LineError(row.line, None, "repeated_header", message))

    def _use_header(self, names: list[str]) -> None:
        self.names, self.width = names, len(names)
        self.unnamed = [index for index, name in enumerate(names) if not name]

    def _stop_reading(self, line: int, names: list[str]) -> None:
        """Rows are not read from here to a header that can be used (see _row_under_unusable_header)."""
        self.unusable_header, self.unusable_names, self.unread = line, names, None

    def _row_under_unusable_header(self, row: _Row) -> FileOrder | None:
        """One error per order, named by the channel and external_id that header does name: the
        orders the merchant has to send again, not one error per row of each."""
        identity = _identity_under(row, self.unusable_names)
        if identity is not None and identity == self.unread:
            return None
        self.unread = identity
        external_id = identity[1] if identity is not None else None
        message = (
            f"the row is under the CSV header of line {self.unusable_header}, which cannot be used: "
            "its order is not imported"
        )
        error = replace(row.error or LineError(row.line, None, "invalid_header", message), external_id=external_id)
        if self.current is not None and identity == self.current.key:
            # The open order goes on under it: imported without this row, it would ship short.
            self.current.fail_row(error)
            return None
        if identity is not None:
            # Not imported, as if closed: a row of it further on does not import it short.
            self.closed.add(_fingerprint(identity))
            self.unread_at = row.line
        # Its cells cannot be read for sure: as an unreadable row, it rejects the open order if
        # that order goes on after it.
        self._suspect(error)
        return FileOrder(row.line, external_id, error=error)

    # --- Rows that cannot be read whole ---

    def _broken_row_of(self, identity: tuple[str, str], row: _Row) -> FileOrder | None:
        """A row not UTF-8, or broken, whose channel and external_id can be read: it fails the
        order it names (imported without it, that order would ship short)."""
        assert row.error is not None
        error = LineError(row.line, identity[1], row.error.code, row.error.message)
        self.unreadable = None
        if self.current is not None and self.current.key == identity:
            self.current.fail_row(error)
            return None
        told = _told_cells(row, self.names)
        # Only the columns the row told: the order's later rows are not checked against the rest.
        finished = self._start(identity, row.line, {c: told[c] for c in ORDER_COLUMNS if c in told})
        self._open_order.fail_row(error)
        return finished

    def _unreadable_row(self, row: _Row) -> FileOrder:
        """Which order the row belongs to is known only once the next row is read: it is
        reported on its own, and rejects the open order if that order goes on after it."""
        assert row.error is not None
        self._suspect(row.error)
        return FileOrder(row.line, None, error=row.error)

    def _nameless_row(self, row: _Row, channel: str, external_id: str) -> FileOrder | None:
        """A row without its channel or external_id."""
        missing = "channel" if not channel else "external_id"
        error = LineError(
            row.line,
            external_id or None,
            f"missing_{missing}",
            f"{missing} is required: channel + external_id identify each imported order",
        )
        if self.current is not None and not channel and external_id == self.current.key[1]:
            # Its external_id names the open order: imported without this row, it would ship short.
            self.current.fail_row(error)
            self.unreadable = None
            return None
        if not external_id:
            # Whose row it is cannot be told: as an unreadable row, it rejects the open order if
            # that order goes on after it (a row of another order between would reopen it).
            self._suspect(error)
        self.nameless = (row.line, external_id) if external_id else None
        return FileOrder(row.line, external_id or None, error=error)

    def _suspect(self, error: LineError) -> None:
        """A row whose order cannot be told: it fails the open order if that order goes on after it."""
        if self.current is not None and self.unreadable is None:
            self.unreadable = error

    # --- Rows of orders ---

    def _order_row(self, row: _Row, cells: dict[str, str], key: tuple[str, str]) -> FileOrder | None:
        """A row naming its order: one more row of the open order, or the first of the next."""
        before, self.nameless = self.nameless, None
        finished = None
        if self.current is not None and self.current.key == key:
            self._goes_on(row, key)
        else:
            finished = self._next_order(row, cells, key, before)
        self.unreadable = None
        self._add_row(row, cells, self._open_order)
        return finished

    def _goes_on(self, row: _Row, key: tuple[str, str]) -> None:
        """The open order goes on: a row between that could not be read was one of its own."""
        if self.unreadable is None:
            return
        channel, external_id = key
        self._open_order.reject(
            LineError(
                row.line,
                external_id,
                "incomplete_order",
                f"line {self.unreadable.line}, among the rows of order {channel}/{external_id}, cannot be read "
                f"({self.unreadable.code}): the order is not imported without it",
            )
        )

    def _next_order(
        self, row: _Row, cells: dict[str, str], key: tuple[str, str], before: tuple[int, str] | None
    ) -> FileOrder | None:
        """The first row of an order: the open one, if any, is finished."""
        finished = self._start(key, row.line, {c: cells.get(c, "") for c in ORDER_COLUMNS})
        channel, external_id = key
        if before is not None and before[1] == external_id:
            message = (
                f"line {before[0]}, right before the rows of order {channel}/{external_id}, names it without "
                "a channel (missing_channel): the order is not imported without it"
            )
            self._open_order.reject(LineError(row.line, external_id, "incomplete_order", message))
        return finished

    def _start(self, key: tuple[str, str], line: int, order_cells: dict[str, str]) -> FileOrder | None:
        """Opens the order `key` starting on `line`; the open one, if any, is finished and returned."""
        finished = None
        if self.current is not None:
            finished = self.current.closed()
            self.closed.add(_fingerprint(self.current.key))
        self.current = _OpenOrder(key, line, order_cells)
        if _fingerprint(key) in self.closed:
            self.current.reject(_reopened(line, key, self.unread_at if key == self.unread else None))
        return finished

    @property
    def _open_order(self) -> _OpenOrder:
        """The open order, once a row has started or gone on with it."""
        assert self.current is not None
        return self.current

    def _add_row(self, row: _Row, cells: dict[str, str], order: _OpenOrder) -> None:
        """One row of the open order: a line of it, or what keeps the order from being imported."""
        assert row.cells is not None
        external_id = order.key[1]
        order.rows += 1
        if len(row.cells) != self.width:
            message = f"{len(row.cells)} cells where the header has {self.width}"
            if row.lines > 1:
                last = row.line + row.lines - 1
                message += f" (the row runs on to line {last}: a quoted cell in it holds a line break)"
            order.reject(LineError(row.line, external_id, "malformed_row", message))
            return
        told = next((index for index in self.unnamed if row.cells[index].strip()), None)
        if told is not None:
            # Read as no field, the value would be lost without a word.
            message = f"column {told + 1} holds a value, but the header gives that column no name"
            order.reject(LineError(row.line, external_id, "malformed_row", message))
            return
        if order.error is not None and order.error.code == "order_reopened":
            return
        if order.rows > 1:
            differing = order.differing_column(cells)
            if differing is not None:
                message = f"{differing} differs from line {order.line}, where this order starts"
                order.reject(LineError(row.line, external_id, "inconsistent_order", message))
        if order.rows > MAX_LINES_PER_ORDER:
            if order.rows == MAX_LINES_PER_ORDER + 1:
                message = f"an order has at most {MAX_LINES_PER_ORDER} lines"
                order.reject(LineError(row.line, external_id, "too_many_lines", message))
            return
        order_line, error = _order_line(cells, row.line, external_id)
        if error is not None:
            order.reject(error)
        order.lines.append(order_line)
        order.line_numbers.append(row.line)


def _same_columns(names: list[str], header: list[str]) -> bool:
    """Whether two headers name the same columns in the same order (the empty cells a spreadsheet
    adds at the end of a line do not count)."""
    names, header = list(names), list(header)
    for cells in (names, header):
        while cells and not cells[-1]:
            cells.pop()
    return names == header


def _reopened(line: int, key: tuple[str, str], unusable_at: int | None = None) -> LineError:
    """The error of a row of an order closed earlier in the file; or, given `unusable_at`, the line
    its rows right before were reported on, under a joined header that cannot be used, of an order
    that header cut."""
    channel, external_id = key
    if unusable_at is not None:
        message = (
            f"line {unusable_at}, among the rows of order {channel}/{external_id}, is under a CSV header "
            "that cannot be used: the order is not imported without it"
        )
        return LineError(line, external_id, "incomplete_order", message)
    message = (
        f"this row reopens order {channel}/{external_id}, closed earlier in the file: "
        "the rows of one order must be adjacent"
    )
    return LineError(line, external_id, "order_reopened", message)


def _told_cells(row: _Row, names: list[str]) -> dict[str, str]:
    """What can be told of an unreadable or broken row's cells, by column: all of a row read
    lossily that has the header's cells, the leading cells of a broken one; else nothing."""
    if row.lossy_cells is not None and len(row.lossy_cells) == len(names):
        cells = row.lossy_cells
    else:
        cells = row.leading_cells or []
    return {name: value.strip() for name, value in zip(names, cells, strict=False)}


def _identity(row: _Row, names: list[str]) -> tuple[str, str] | None:
    """The channel and external_id of a row read only lossily, or broken, when both came through
    intact."""
    if row.cells is not None:
        return None
    cells = _told_cells(row, names)
    channel, external_id = cells.get("channel", ""), cells.get("external_id", "")
    if not channel or not external_id or "\ufffd" in channel + external_id:
        return None
    return channel, external_id


def _identity_under(row: _Row, names: list[str]) -> tuple[str, str] | None:
    """The channel and external_id of a row under a header that cannot be used, by the names that
    header gives, when both can be read."""
    if row.cells is None:
        return _identity(row, names)
    cells = {name: value.strip() for name, value in zip(names, row.cells, strict=False)}
    channel, external_id = cells.get("channel", ""), cells.get("external_id", "")
    return (channel, external_id) if channel and external_id else None


def column_of_field(field_path: str) -> str:
    """A body field as the CSV column that fills it ("customer.email" -> "customer_email",
    "lines[2].quantity" -> "quantity"); other fields unchanged."""
    match = _LINE_FIELD.match(field_path)
    if match:
        return match.group(2) or "lines"
    return _FIELD_TO_COLUMN.get(field_path, field_path)


def field_in_file(field_path: str, file_format: str | None) -> str:
    """How an error names a field to the author of a file of `file_format`: CSV columns for CSV,
    body fields otherwise."""
    return column_of_field(field_path) if file_format == CSV else field_path
