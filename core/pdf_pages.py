"""PDFs of 4x6 inch pages written by hand: the built-in carrier's labels and the OMS's pick slips."""

import hashlib
import unicodedata

from core.models import Address, Order, ShipmentLine, units_text

# The PDF is written by hand: a page with uncompressed text in the standard Helvetica
# fonts (every PDF reader has them, so nothing is embedded) takes about 40 lines, and no
# well-kept PDF writer is a dependency of the OMS; adding one (and its native wheels) to every
# Lambda package for a stand-in carrier's label and a store's pick slip would not pay for itself.

# 4 x 6 inches in PDF points (1/72 inch): the usual thermal shipping label.
PAGE_WIDTH = 288
PAGE_HEIGHT = 432
MARGIN = 18
MAX_LABEL_LINES = 12  # content lines a label lists before "... and N more lines"
FOOTER_SIZE = 7
FOOTER_ROOM = FOOTER_SIZE + 2 + 4  # a page number's row under a page's last row, and a gap above it

Row = tuple[str, float, str] | None  # (font, size, text) of a line of text, or None for a rule


def gs1_check_digit(digits: str) -> str:
    """The GS1 mod-10 check digit of a string of digits (weights 3, 1, ... from the right)."""
    if not digits.isascii() or not digits.isdigit():
        raise ValueError("a check digit is computed over digits only")
    weighted = sum(int(digit) * (3 if index % 2 == 0 else 1) for index, digit in enumerate(reversed(digits)))
    return str((10 - weighted % 10) % 10)


def derived_code(prefix: str, salt: str, value: str, digits: int) -> str:
    """`prefix` + `digits` digits derived from `value` (SHA-256 of `salt:value`, so the same value
    always gets the same code) + their GS1 check digit: a number printed on a label or slip, whose
    mistyped digit at a counter or a scanner is caught."""
    digest = hashlib.sha256(f"{salt}:{value}".encode()).digest()
    body = str(int.from_bytes(digest, "big") % 10**digits).zfill(digits)
    return f"{prefix}{body}{gs1_check_digit(body)}"


def pdf_text(value: str) -> str:
    """`value` as the body of a PDF literal string that a page's standard font shows: each character
    as its code in the fonts' WinAnsiEncoding (Windows-1252: é is 0xE9), written as an octal escape
    beyond ASCII so that the page stays ASCII; specials escaped. A letter the encoding lacks prints
    as itself without its accent where it has one (ř as r, by NFKD), anything else (Ł, CJK, an
    emoji, a control character) as "?": a driver reads "Dvorak", not "Dvo??k"."""
    return "".join(_shown(char) for char in value)


def _shown(char: str) -> str:
    if char in "\\()":
        return "\\" + char
    if " " <= char <= "~":
        return char
    code = _win_ansi_code(char)
    if code is not None:
        return f"\\{code:03o}"
    plain = "".join(part for part in unicodedata.normalize("NFKD", char) if not unicodedata.combining(part))
    if plain and all(" " <= part <= "~" or _win_ansi_code(part) is not None for part in plain):
        return "".join(_shown(part) for part in plain)
    return "?"


def _win_ansi_code(char: str) -> int | None:
    """The code of `char` in WinAnsiEncoding beyond ASCII (which cp1252 is, for every code it
    defines), or None: the C0 and C1 controls have no glyph."""
    try:
        code = char.encode("cp1252")[0]
    except UnicodeEncodeError:
        return None
    return code if code >= 0x80 else None


def _room(size: float) -> int:
    # Helvetica averages about 0.55 em a character.
    return int((PAGE_WIDTH - 2 * MARGIN) / (size * 0.55))


def fit(value: str, size: float) -> str:
    """`value` cut where it would run off the label."""
    room = _room(size)
    return value if len(value) <= room else value[: room - 3] + "..."


def wrapped(value: str, size: float) -> list[str]:
    """`value` whole, over as many lines as the label's width needs: for a text someone matches
    character by character (an order's number read out at a counter), which `fit` would cut."""
    room = _room(size)
    return [value[start : start + room] for start in range(0, len(value), room)]


def address_lines(address: Address) -> list[str]:
    city_line = " ".join(part for part in (address.city, address.region, address.postal_code) if part)
    return [address.name, address.line1, *([address.line2] if address.line2 else []), city_line, address.country]


def weight_text(weight_grams: int) -> str:
    pounds = weight_grams / 453.59237
    return f"{weight_grams / 1000:.2f} kg ({pounds:.2f} lb)"


def contents_heading(lines: list[ShipmentLine]) -> str:
    """The heading above a parcel's lines: "Contents (1 unit):", "Contents (3 units):"."""
    return f"Contents ({units_text(sum(line.quantity for line in lines))}):"


def content_lines(order: Order, lines: list[ShipmentLine], limit: int | None = MAX_LABEL_LINES) -> list[str]:
    """A parcel's lines, one row each: the first `limit - 1` and a count of the rest when there are
    more than `limit` (a label's one page), every one with no limit (a pick slip, picked from)."""
    sku_of = {line.line_id: line.sku for line in order.lines}
    listed = [f"{line.line_id}  {sku_of.get(line.line_id, '?')}  x{line.quantity}" for line in lines]
    if limit is not None and len(listed) > limit:
        listed = [*listed[: limit - 1], f"... and {len(listed) - limit + 1} more lines"]
    return listed


def rendered(rows: list[Row]) -> bytes:
    """The page's content stream: (font, size, text) rows top-down, None a rule between blocks."""
    commands: list[str] = []
    y = PAGE_HEIGHT - MARGIN
    for row in rows:
        if row is None:
            y -= 4
            commands.append(f"0.8 w {MARGIN} {y} m {PAGE_WIDTH - MARGIN} {y} l S")
            y -= 4
            continue
        font, size, text = row
        y -= size + 2
        commands.append(f"BT /{font} {size} Tf {MARGIN} {y} Td ({pdf_text(fit(text, size))}) Tj ET")
    return "\n".join(commands).encode("ascii")


def _height(row: Row) -> float:
    return 8 if row is None else row[1] + 2


def paged(rows: list[Row], name: str) -> list[bytes]:
    """The content streams of `rows` top-down over as many pages as they need: one page as
    `rendered` makes it when they fit, else pages each ending in "<name> page k of n" (a page that
    comes apart from the first still says whose it is)."""
    if sum(_height(row) for row in rows) <= PAGE_HEIGHT - 2 * MARGIN:
        return [rendered(rows)]
    room = PAGE_HEIGHT - 2 * MARGIN - FOOTER_ROOM
    pages: list[list[Row]] = [[]]
    used = 0.0
    for row in rows:
        if used + _height(row) > room:
            pages.append([])
            used = 0.0
        pages[-1].append(row)
        used += _height(row)
    last = len(pages)
    return [rendered(page) + b"\n" + _footer(f"{name} page {k} of {last}") for k, page in enumerate(pages, start=1)]


def _footer(text: str) -> bytes:
    return f"BT /F1 {FOOTER_SIZE} Tf {MARGIN} {MARGIN} Td ({pdf_text(fit(text, FOOTER_SIZE))}) Tj ET".encode("ascii")


def _text_string(value: str) -> str:
    """`value` as a PDF text string (the document's title, outside any page and its font): a
    literal when it is ASCII, else UTF-16BE after its byte order mark, in hex."""
    if value.isascii():
        return f"({pdf_text(value)})"
    return "<" + ("\ufeff" + value).encode("utf-16-be").hex().upper() + ">"


def pdf_document(content: bytes, title: str) -> bytes:
    """A valid single-page PDF 1.4 of PAGE_WIDTH x PAGE_HEIGHT points showing `content`."""
    return pdf_pages_document([content], title)


def pdf_pages_document(pages: list[bytes], title: str) -> bytes:
    """A valid PDF 1.4 of one PAGE_WIDTH x PAGE_HEIGHT page per content stream of `pages`."""
    fonts_at = 3 + 2 * len(pages)  # after the catalog, the page tree and each page with its content
    fonts = f"/Font << /F1 {fonts_at} 0 R /F2 {fonts_at + 1} 0 R >>"
    kids = " ".join(f"{3 + 2 * n} 0 R" for n in range(len(pages)))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode("ascii"),
    ]
    for n, content in enumerate(pages):
        objects += [
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {PAGE_WIDTH} {PAGE_HEIGHT}] "
            f"/Resources << {fonts} >> /Contents {4 + 2 * n} 0 R >>".encode("ascii"),
            b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        ]
    objects += [
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>",
        f"<< /Title {_text_string(title)} /Producer (OMS) >>".encode("ascii"),
    ]
    # The binary comment after the header tells transfer tools the file is not text.
    document = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(document))
        document += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref_at = len(document)
    # Every cross-reference entry is exactly 20 bytes: 10-digit offset, 5-digit generation, type, EOL.
    document += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    document += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    document += b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\n" % (len(objects) + 1, len(objects))
    document += b"startxref\n%d\n%%%%EOF\n" % xref_at
    return bytes(document)
