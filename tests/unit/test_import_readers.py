"""The bulk import readers beside the splitter (functions/import_splitter/readers.py): CSV rows
and JSON Lines become POST /orders bodies, each with the physical line it starts on, read as a
stream. Pure: no AWS, no files."""

from __future__ import annotations

import csv
import gzip
import itertools
import json
import re
import tracemalloc
from collections.abc import Iterator

import pytest

from core.imports import FileOrder, ImportFileError, LineError, import_id_for, line_of_field
from core.strict_json import MAX_DEPTH
from functions.import_splitter.readers import (
    COLUMNS,
    CSV,
    JSONL,
    MAX_FIELD_CHARS,
    MAX_LINE_BYTES,
    OPTIONAL_COLUMNS,
    OrderFile,
    column_of_field,
    field_in_file,
    physical_lines,
)
from tests.builders import csv_file, csv_row

HEADER = ",".join(COLUMNS)


def row(external_id: str = "ext-1", sku: str = "TSHIRT", quantity: str = "1", **cells: str) -> str:
    return csv_row(external_id, sku, quantity, **{"channel": "web", **cells})


def read(data: bytes, name: str = "orders.csv", chunk: int = 64 * 1024) -> list[FileOrder]:
    return list(OrderFile(chunks(data, chunk), name))


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def errors_of(orders: list[FileOrder]) -> list[tuple[int, str | None, str]]:
    return [(o.error.line, o.error.external_id, o.error.code) for o in orders if o.error is not None]


def error_on(orders: list[FileOrder], line: int) -> LineError:
    return next(o.error for o in orders if o.error is not None and o.error.line == line)


# --- CSV: rows become orders ---------------------------------------------------------------------


def test_adjacent_rows_sharing_channel_and_external_id_form_one_order():
    orders = read(
        csv_file(row("ext-1", "TSHIRT", "2"), row("ext-1", "MUG", "1"), row("ext-2", "HOODIE", "3"), row("ext-3"))
    )

    assert [(o.line, o.external_id, o.line_numbers) for o in orders] == [
        (2, "ext-1", (2, 3)),
        (4, "ext-2", (4,)),
        (5, "ext-3", (5,)),
    ]
    assert orders[0].body["lines"] == [{"sku": "TSHIRT", "quantity": 2}, {"sku": "MUG", "quantity": 1}]
    assert not any(o.rejected for o in orders)


def test_a_row_becomes_a_post_orders_body_and_an_empty_cell_is_an_absent_field():
    (order,) = read(csv_file(row(customer_name="", ship_region="", shipping_method="express")))

    assert order.body == {
        "channel": "web",
        "external_id": "ext-1",
        "currency": "USD",
        "customer": {"id": "cus_1", "email": "ada@example.com"},
        "shipping_address": {
            "name": "Ada Lovelace",
            "line1": "1 Market St",
            "city": "San Francisco",
            "postal_code": "94105",
            "country": "US",
        },
        "shipping_method": "express",
        "payment": {"method": "test", "token": "tok_approve"},
        "lines": [{"sku": "TSHIRT", "quantity": 1}],
    }


def test_continuation_rows_may_leave_the_order_cells_empty_but_may_not_contradict_them():
    blank = dict.fromkeys(c for c in COLUMNS if c not in ("channel", "external_id", "sku", "quantity"))
    continuation = row("ext-1", "MUG", "1", **{c: "" for c in blank})
    contradiction = row("ext-2", "MUG", "1", ship_city="Oakland")

    orders = read(csv_file(row("ext-1"), continuation, row("ext-2"), contradiction))

    assert not orders[0].rejected and len(orders[0].body["lines"]) == 2
    assert errors_of(orders) == [(5, "ext-2", "inconsistent_order")]
    assert "ship_city" in orders[1].error.message and "line 4" in orders[1].error.message


def test_a_row_that_reopens_an_order_closed_earlier_is_an_error_on_its_line():
    orders = read(csv_file(row("ext-1"), row("ext-2"), row("ext-1", "MUG"), row("ext-1", "HOODIE"), row("ext-3")))

    assert [o.external_id for o in orders] == ["ext-1", "ext-2", "ext-1", "ext-3"]
    assert errors_of(orders) == [(4, "ext-1", "order_reopened")]  # its two rows: one failed order
    assert not orders[0].rejected and orders[0].body["lines"] == [{"sku": "TSHIRT", "quantity": 1}]
    assert not orders[3].rejected


def test_a_bad_row_rejects_its_whole_order_and_names_its_line():
    orders = read(csv_file(row("ext-1"), row("ext-1", "MUG", "x"), row("ext-1", "HOODIE", "y"), row("ext-2")))

    assert errors_of(orders) == [(3, "ext-1", "invalid_number")]
    assert orders[0].body is None
    assert "1 more problem" in orders[0].error.message
    assert not orders[1].rejected


@pytest.mark.parametrize("quantity", ["two", "1.5", "-1", "1e3", "0x10", "١"])
def test_a_quantity_that_is_not_a_whole_number_is_invalid_number(quantity: str):
    (order,) = read(csv_file(row(quantity=quantity)))

    assert errors_of([order]) == [(2, "ext-1", "invalid_number")]
    assert quantity not in order.error.message  # values are never echoed back
    # "-1" is a whole number: the message says what is asked (it said "a whole number").
    assert order.error.message.startswith("quantity must be a positive whole number written in digits")


def test_a_quantity_with_spaces_or_a_plus_sign_is_a_number_and_range_is_left_to_validation():
    orders = read(csv_file(row("ext-1", quantity=" 3 "), row("ext-2", quantity="+4"), row("ext-3", quantity="0")))

    assert [o.body["lines"][0]["quantity"] for o in orders] == [3, 4, 0]


def test_a_row_of_another_order_without_its_channel_is_an_error_and_does_not_break_the_order_around_it():
    orders = read(csv_file(row("ext-1"), row("ext-x", channel=""), row("ext-1", "MUG")))

    assert errors_of(orders) == [(3, "ext-x", "missing_channel")]
    (order,) = [o for o in orders if not o.rejected]
    assert order.line_numbers == (2, 4)


def test_a_row_without_its_external_id_among_the_rows_of_one_order_rejects_that_order():
    # Imported from its rows around it, the order shipped without the line of the row between:
    # whose row it is cannot be told, and a row of another order between would have reopened it.
    orders = read(csv_file(row("ext-1"), row("", "MUG"), row("ext-1", "HOODIE"), row("ext-2")))

    assert errors_of(orders) == [(3, None, "missing_external_id"), (4, "ext-1", "incomplete_order")]
    assert "line 3, among the rows of order web/ext-1" in error_on(orders, 4).message
    assert [o.external_id for o in orders if not o.rejected] == ["ext-2"]


def test_a_row_without_its_external_id_after_an_order_costs_only_its_own_row():
    orders = read(csv_file(row("ext-1"), row("", "MUG"), row("ext-2")))

    assert errors_of(orders) == [(3, None, "missing_external_id")]
    assert [o.external_id for o in orders if not o.rejected] == ["ext-1", "ext-2"]


def test_a_row_without_its_channel_naming_the_order_it_is_among_rejects_that_order_even_as_its_last_row():
    # Its external_id says whose row it is: the order was imported without it, and shipped short.
    orders = read(csv_file(row("ext-1"), row("ext-1", "MUG", channel=""), row("ext-2")))

    assert errors_of(orders) == [(3, "ext-1", "missing_channel")]
    assert [o.external_id for o in orders] == ["ext-1", "ext-2"]  # one order of two rows, rejected
    assert [o.external_id for o in orders if not o.rejected] == ["ext-2"]


def test_a_row_without_its_channel_naming_the_order_after_it_rejects_that_order():
    # Its external_id says it is that order's first row: the order was imported from its rows
    # after it alone, and shipped short.
    orders = read(csv_file(row("ext-0"), row("ext-1", "TSHIRT", channel=""), row("ext-1", "MUG"), row("ext-2")))

    assert errors_of(orders) == [(3, "ext-1", "missing_channel"), (4, "ext-1", "incomplete_order")]
    assert "line 3, right before the rows of order web/ext-1" in error_on(orders, 4).message
    assert [o.external_id for o in orders if not o.rejected] == ["ext-0", "ext-2"]


def test_an_order_of_more_than_100_lines_is_too_many_lines():
    rows = [row("ext-1", f"SKU-{i}") for i in range(101)]

    orders = read(csv_file(*rows, row("ext-2")))

    assert errors_of(orders) == [(102, "ext-1", "too_many_lines")]
    assert not orders[1].rejected


def test_an_order_of_exactly_100_lines_is_read_with_all_100():
    rows = [row("ext-1", f"SKU-{i}") for i in range(100)]

    orders = read(csv_file(*rows, row("ext-2")))

    assert errors_of(orders) == []
    assert [line["sku"] for line in orders[0].body["lines"]] == [f"SKU-{i}" for i in range(100)]
    assert orders[0].line_numbers == tuple(range(2, 102))


# --- CSV: the file's shape -----------------------------------------------------------------------


def test_quoted_cells_keep_commas_quotes_and_newlines_and_line_numbers_stay_physical():
    quoted = row("ext-1", ship_line1='"221 Baker St, Apt 2"', customer_name='"Ada ""Countess"" Lovelace"')
    multi_line = row("ext-2", ship_line2='"Floor 3\nRing twice"')

    orders = read(csv_file(quoted, multi_line, row("ext-3")))

    assert orders[0].body["shipping_address"]["line1"] == "221 Baker St, Apt 2"
    assert orders[0].body["customer"]["name"] == 'Ada "Countess" Lovelace'
    assert orders[1].body["shipping_address"]["line2"] == "Floor 3\nRing twice"
    assert [o.line for o in orders] == [2, 3, 5]  # the quoted newline took line 4


def test_a_byte_order_mark_and_crlf_line_endings_are_read_as_plain_csv():
    data = b"\xef\xbb\xbf" + csv_file(row("ext-1"), row("ext-1", "MUG"), row("ext-2"), newline="\r\n")

    orders = read(data)

    assert [(o.line, o.external_id, o.line_numbers) for o in orders] == [(2, "ext-1", (2, 3)), (4, "ext-2", (4,))]
    assert orders[0].body["channel"] == "web"
    assert orders[1].body["payment"]["token"] == "tok_approve"  # no "\r" left on the last cell


@pytest.mark.parametrize("separator", [";", "\t"])
@pytest.mark.parametrize("name", ["orders.csv", "orders.txt", "orders", "orders.tsv"])
def test_a_file_separated_by_semicolons_or_tabs_is_read_like_one_separated_by_commas(separator: str, name: str):
    # A .tsv file (Google Sheets' download of tab-separated values) failed as an unknown format.
    # Excel saves "CSV" with the locale's list separator: a semicolon in much of Europe.
    rows = [row("ext-1"), row("ext-1", "MUG"), row("ext-2")]
    commas = csv_file(*rows, newline="\r\n")
    cells = [next(csv.reader([line])) for line in commas.decode().splitlines()]
    for order_row in cells[1:3]:
        order_row[COLUMNS.index("ship_line1")] = f'"1 Rue de Rivoli{separator} b\u00e2t. 2"'
    separated = "\ufeff" + "".join(separator.join(line) + "\r\n" for line in cells)

    orders = read(separated.encode(), name)

    assert [(o.line, o.external_id, o.line_numbers, o.error) for o in orders] == [
        (2, "ext-1", (2, 3), None),
        (4, "ext-2", (4,), None),
    ]
    assert orders[0].body["shipping_address"]["line1"] == f"1 Rue de Rivoli{separator} b\u00e2t. 2"
    assert orders[1].body == read(commas)[1].body


@pytest.mark.parametrize("separator", [",", ";", "\t"])
@pytest.mark.parametrize("name", ["orders.csv", "orders.txt"])
def test_a_line_naming_the_separator_before_the_header_is_followed(separator: str, name: str):
    # Written by tools that make CSV for Excel; it was read as the header and failed the file.
    data = f"SEP={separator}\r\n".encode() + csv_file(row("ext-1"), row("ext-2"), newline="\r\n").replace(
        b",", separator.encode()
    )

    orders = read(data, name)

    assert [(o.line, o.external_id, o.error) for o in orders] == [(3, "ext-1", None), (4, "ext-2", None)]


def test_a_header_that_names_the_columns_with_no_separator_fails_the_file():
    with pytest.raises(ImportFileError) as failure:
        read(f"{HEADER.replace(',', '|')}\n".encode())

    assert failure.value.code == "invalid_header"


def test_empty_lines_and_rows_of_empty_cells_are_skipped_but_still_counted_as_lines():
    empty_cells = "," * (len(COLUMNS) - 1)

    orders = read(csv_file("", row("ext-1"), "", "   ", empty_cells, row("ext-2"), ""))

    assert [(o.line, o.external_id) for o in orders] == [(3, "ext-1"), (7, "ext-2")]
    assert errors_of(orders) == []


def test_a_huge_field_is_an_error_on_its_line_and_the_rows_after_it_are_read():
    huge = row("ext-2", customer_name="x" * (MAX_FIELD_CHARS + 10))

    orders = read(csv_file(row("ext-1"), huge, row("ext-3")))

    assert errors_of(orders) == [(3, "ext-2", "field_too_large")]
    assert [o.external_id for o in orders if not o.rejected] == ["ext-1", "ext-3"]


def test_a_line_over_the_limit_is_skipped_without_being_held_and_reported_on_its_line():
    long_line = "x" * (MAX_LINE_BYTES + 1)

    orders = read(csv_file(row("ext-1"), long_line, row("ext-2")), chunk=4096)

    assert errors_of(orders) == [(3, None, "line_too_long")]
    assert [o.external_id for o in orders if not o.rejected] == ["ext-1", "ext-2"]


def test_a_last_line_over_the_limit_without_a_line_ending_is_reported_once_on_its_line():
    # What came after the line was reported, up to the end of the file, was read as a line of its own.
    data = csv_file(row("ext-1")) + b"x" * (MAX_LINE_BYTES + 10_000)

    orders = read(data, chunk=4096)

    assert errors_of(orders) == [(3, None, "line_too_long")]
    assert [o.external_id for o in orders if not o.rejected] == ["ext-1"]


def test_a_line_that_is_not_utf8_is_an_error_on_its_line():
    data = csv_file(row("ext-1"), "web,ext-2,\xff", row("ext-3")).replace("\xff".encode(), b"\xff")

    orders = read(data)

    assert errors_of(orders) == [(3, None, "invalid_encoding")]
    assert [o.external_id for o in orders if not o.rejected] == ["ext-1", "ext-3"]


def test_a_row_with_the_wrong_number_of_cells_fails_its_order():
    orders = read(csv_file(row("ext-1"), row("ext-1", "MUG") + ",extra", row("ext-2")))

    assert errors_of(orders) == [(3, "ext-1", "malformed_row")]


def test_the_header_may_leave_out_optional_columns_and_list_columns_in_any_order():
    columns = [c for c in reversed(COLUMNS) if c not in ("customer_name", "ship_line2", "ship_region")]
    values = dict(zip(COLUMNS, row().split(","), strict=True))
    data = (",".join(columns) + "\n" + ",".join(values[c] for c in columns) + "\n").encode()

    (order,) = read(data)

    assert order.body["customer"] == {"id": "cus_1", "email": "ada@example.com"}
    assert order.body["lines"] == [{"sku": "TSHIRT", "quantity": 1}]


@pytest.mark.parametrize(
    ("header", "mentions"),
    [
        (HEADER.replace("payment_token", "token"), "missing payment_token"),
        (HEADER + ",gift_wrap", "unknown gift_wrap"),
        (HEADER + ",sku", "repeated sku"),
    ],
)
def test_an_unusable_header_fails_the_file(header: str, mentions: str):
    with pytest.raises(ImportFileError) as failure:
        read(f"{header}\n{row()}\n".encode())

    assert failure.value.code == "invalid_header"
    assert mentions in failure.value.message


def test_empty_columns_a_spreadsheet_adds_after_the_header_are_read_as_no_column():
    # Excel saves a column that once held formatting as one more empty cell on every line.
    data = f"\ufeff{HEADER},,\r\n{row('ext-1')},,\r\n{row('ext-1', 'MUG')},,\r\n{row('ext-2')},,\r\n".encode()

    orders = read(data)

    assert errors_of(orders) == []
    assert [[(line["sku"], line["quantity"]) for line in o.body["lines"]] for o in orders] == [
        [("TSHIRT", 1), ("MUG", 1)],
        [("TSHIRT", 1)],
    ]


def test_a_value_under_a_column_the_header_does_not_name_fails_its_order_never_dropped():
    data = csv_file(row("ext-1") + ",", row("ext-2") + ",gift wrap", row("ext-3") + ",").replace(
        HEADER.encode(), (HEADER + ",").encode(), 1
    )

    orders = read(data)

    assert errors_of(orders) == [(3, "ext-2", "malformed_row")]
    assert "column 19" in error_on(orders, 3).message
    assert [o.external_id for o in orders if o.error is None] == ["ext-1", "ext-3"]


def test_spaces_under_a_column_the_header_does_not_name_are_no_value():
    # A spreadsheet's blank cell may hold a space: no value lost, nothing to report.
    data = csv_file(row("ext-1") + ", ", row("ext-2") + ",  ").replace(HEADER.encode(), (HEADER + ",").encode(), 1)

    orders = read(data)

    assert errors_of(orders) == []
    assert [o.external_id for o in orders] == ["ext-1", "ext-2"]


def test_a_header_that_is_not_utf8_fails_the_file_naming_the_encoding():
    # Excel's "CSV (Comma delimited)" saves Windows-1252: here a column the merchant added.
    data = f"{HEADER},r\u00e9f\u00e9rence\n{row()},x\n".encode("cp1252")

    with pytest.raises(ImportFileError) as failure:
        read(data)

    assert failure.value.code == "invalid_encoding"
    assert "line 1 is not UTF-8" in failure.value.message


def test_a_header_repeated_by_joining_two_exports_is_skipped_and_reported_once_on_its_line():
    # Read as an order line, the header failed with "quantity must be a whole number".
    data = csv_file(row("ext-1"), row("ext-2"), HEADER, row("ext-3"), row("ext-4"))

    orders = read(data)

    assert [(o.line, o.external_id) for o in orders if o.error is None] == [
        (2, "ext-1"),
        (3, "ext-2"),
        (5, "ext-3"),
        (6, "ext-4"),
    ]
    assert errors_of(orders) == [(4, None, "repeated_header")]
    assert "repeats the CSV header of line 1" in error_on(orders, 4).message


def test_a_repeated_header_is_read_as_the_header_is_trimmed_in_any_case_with_trailing_empty_cells():
    repeated = ", ".join(name.upper() for name in COLUMNS) + ",,"

    orders = read(csv_file(row("ext-1"), repeated, row("ext-2") + ",,"))

    assert errors_of(orders) == [(3, None, "repeated_header")]
    assert [o.external_id for o in orders if o.error is None] == ["ext-1", "ext-2"]


def test_an_order_whose_rows_a_repeated_header_separates_stays_one_order():
    orders = read(csv_file(row("ext-1"), HEADER, row("ext-1", "MUG"), row("ext-2")))

    assert [(o.line, o.external_id, o.line_numbers) for o in orders if o.error is None] == [
        (2, "ext-1", (2, 4)),
        (5, "ext-2", (5,)),
    ]
    assert errors_of(orders) == [(3, None, "repeated_header")]


def test_a_byte_order_mark_where_a_joined_file_starts_is_dropped_like_the_files_own():
    # Kept, it was in the first cell: the header was read as an order, a row's channel "\ufeffweb"
    # failed validation on a character no editor shows.
    first = b"\xef\xbb\xbf" + csv_file(row("ext-1"), newline="\r\n")
    with_header = b"\xef\xbb\xbf" + csv_file(row("ext-2"), newline="\r\n")
    rows_only = b"\xef\xbb\xbf" + f"{row('ext-3')}\r\n".encode()

    orders = read(first + with_header + rows_only)

    assert errors_of(orders) == [(3, None, "repeated_header")]
    assert [(o.line, o.body["channel"]) for o in orders if o.error is None] == [(2, "web"), (4, "web"), (5, "web")]


def row_in(columns: list[str], external_id: str, **cells: str) -> str:
    """A row of `columns` only, in their order."""
    values = dict(zip(COLUMNS, row(external_id, **cells).split(","), strict=True))
    return ",".join(values[column] for column in columns)


def test_rows_after_a_header_with_other_columns_are_read_by_that_header():
    # Read by line 1's header, the second export's names went into each other's columns silently.
    swapped = list(COLUMNS)
    first, second = swapped.index("customer_name"), swapped.index("ship_name")
    swapped[first], swapped[second] = swapped[second], swapped[first]
    names = {"customer_name": "Ada Buyer", "ship_name": "Bob Recipient"}

    orders = read(csv_file(row("ext-1", **names), ",".join(swapped), row_in(swapped, "ext-2", **names)))

    assert errors_of(orders) == [(3, None, "repeated_header")]
    assert "other columns than the header of line 1" in error_on(orders, 3).message
    assert [(o.line, o.body["customer"]["name"], o.body["shipping_address"]["name"]) for o in orders if o.body] == [
        (2, "Ada Buyer", "Bob Recipient"),
        (4, "Ada Buyer", "Bob Recipient"),
    ]


def test_a_third_joined_export_repeating_the_second_s_header_names_that_header_s_line():
    # Three exports joined, the last two with the same columns: its line is where to look, not line 1's.
    swapped = list(COLUMNS)
    first, second = swapped.index("customer_name"), swapped.index("ship_name")
    swapped[first], swapped[second] = swapped[second], swapped[first]
    other = ",".join(swapped)

    orders = read(csv_file(row("ext-1"), other, row_in(swapped, "ext-2"), other, row_in(swapped, "ext-3")))

    assert errors_of(orders) == [(3, None, "repeated_header"), (5, None, "repeated_header")]
    assert "other columns than the header of line 1" in error_on(orders, 3).message
    assert "repeats the CSV header of line 3" in error_on(orders, 5).message


def test_rows_after_a_header_with_fewer_columns_are_read_by_it_even_across_lines():
    # Each failed as "17 cells where the header has 18"; one with a line break in a cell as an
    # unclosed quote.
    fewer = [column for column in COLUMNS if column != "shipping_method"]

    orders = read(
        csv_file(
            row("ext-1"),
            ",".join(fewer),
            row_in(fewer, "ext-2", ship_line2='"Floor 3\nRing twice"'),
            row_in(fewer, "ext-3"),
        )
    )

    assert errors_of(orders) == [(3, None, "repeated_header")]
    assert [(o.line, o.external_id) for o in orders if o.error is None] == [(2, "ext-1"), (4, "ext-2"), (6, "ext-3")]
    assert orders[2].body["shipping_address"]["line2"] == "Floor 3\nRing twice"


def test_an_unclosed_quote_under_a_joined_header_with_fewer_columns_counts_that_header_s_cells():
    # The count a merchant checks the row against is the header it is under, not line 1's.
    fewer = [column for column in COLUMNS if column not in OPTIONAL_COLUMNS]
    data = csv_file(
        row("ext-1"),
        ",".join(fewer),
        row_in(fewer, "ext-2", ship_line1='"1 Market St'),
        row_in(fewer, "ext-3"),
        row_in(fewer, "ext-4"),
    )

    orders = read(data)

    assert errors_of(orders) == [(3, None, "repeated_header"), (4, "ext-2", "unclosed_quote")]
    assert f"where the header has {len(fewer)})" in error_on(orders, 4).message
    assert [(o.line, o.external_id) for o in orders if not o.rejected] == [(2, "ext-1"), (5, "ext-3"), (6, "ext-4")]


def test_rows_after_a_header_with_another_separator_are_read_by_that_separator():
    # The second export's header and rows were read by commas: every row of it failed, each saying
    # "external_id is required".
    european = b"\xef\xbb\xbf" + csv_file(row("ext-2"), row("ext-3"), newline="\r\n").replace(b",", b";")

    orders = read(csv_file(row("ext-1")) + european)

    assert errors_of(orders) == [(3, None, "repeated_header")]
    assert [(o.line, o.external_id) for o in orders if o.error is None] == [(2, "ext-1"), (4, "ext-2"), (5, "ext-3")]


@pytest.mark.parametrize("separator", [",", ";", "\t"])
def test_a_line_naming_the_separator_where_a_joined_file_starts_is_followed_not_read_as_an_order(separator: str):
    # Two exports written for Excel joined together: the second's "sep=;" line was an order row
    # missing its external_id, one error more than the files joined had.
    second = f"sep={separator}\r\n".encode() + csv_file(row("ext-2"), row("ext-3"), newline="\r\n").replace(
        b",", separator.encode()
    )

    orders = read(csv_file(row("ext-1")) + second)

    assert errors_of(orders) == [(4, None, "repeated_header")]
    assert [(o.line, o.external_id) for o in orders if o.error is None] == [(2, "ext-1"), (5, "ext-2"), (6, "ext-3")]


def test_a_line_naming_the_separator_further_on_is_followed_by_the_rows_after_it_with_no_header_between():
    # As at the top of a file: the rows after it are read by the separator it names.
    orders = read(csv_file(row("ext-1"), "sep=;", row("ext-2").replace(",", ";")))

    assert errors_of(orders) == []
    assert [(o.line, o.external_id) for o in orders] == [(2, "ext-1"), (4, "ext-2")]


def test_rows_after_a_header_that_cannot_be_used_fail_until_a_header_that_can():
    unusable = HEADER + ",gift_note"

    orders = read(csv_file(row("ext-1"), unusable, row("ext-2") + ",x", row("ext-3") + ",y", HEADER, row("ext-4")))

    assert errors_of(orders) == [
        (3, None, "invalid_header"),
        (4, "ext-2", "invalid_header"),
        (5, "ext-3", "invalid_header"),
        (6, None, "repeated_header"),
    ]
    assert "unknown gift_note" in error_on(orders, 3).message
    assert "under the CSV header of line 3, which cannot be used" in error_on(orders, 4).message
    assert [(o.line, o.external_id) for o in orders if o.error is None] == [(2, "ext-1"), (7, "ext-4")]


def test_a_joined_header_that_is_not_utf8_is_reported_once_and_each_order_under_it_once():
    # A Latin-1 export joined to a UTF-8 one: its header was an unreadable order line (external_id
    # "external_id"), then each of its rows a malformed_row ("19 cells where the header has 18")
    # that no row was. What the merchant can act on: the header (save that file as UTF-8), and
    # which orders were not imported.
    latin1 = (HEADER + ",notiz_f\xfcr_lager").encode("latin-1")
    second = [row("ext-2") + ",x", row("ext-2", "MUG") + ",", row("ext-3", customer_name="Ren\xe9") + ",y"]

    orders = read(
        csv_file(row("ext-1")) + latin1 + b"\n" + "\n".join([*second, HEADER, row("ext-4")]).encode("latin-1") + b"\n"
    )

    assert errors_of(orders) == [
        (3, None, "invalid_encoding"),
        (4, "ext-2", "invalid_header"),
        (6, "ext-3", "invalid_encoding"),
        (7, None, "repeated_header"),
    ]
    assert "this line is a CSV header again (files joined together?), and is not UTF-8" in error_on(orders, 3).message
    assert "under the CSV header of line 3, which cannot be used" in error_on(orders, 4).message
    assert [(o.line, o.external_id) for o in orders if o.error is None] == [(2, "ext-1"), (8, "ext-4")]


def test_the_rows_under_a_joined_header_not_utf8_and_separated_otherwise_are_read_by_its_separator():
    # A Latin-1 export separated by semicolons joined to a UTF-8 one separated by commas: read by
    # commas, its rows named no order, and the merchant could not tell which orders to send again.
    latin1 = (HEADER + ",notiz_f\xfcr_lager").replace(",", ";").encode("latin-1")
    second = (row("ext-2") + ",x").replace(",", ";").encode("latin-1")

    orders = read(csv_file(row("ext-1")) + latin1 + b"\n" + second + b"\n")

    assert errors_of(orders) == [(3, None, "invalid_encoding"), (4, "ext-2", "invalid_header")]


def test_an_order_whose_rows_go_on_past_a_header_that_cannot_be_used_is_not_imported_short():
    # Two exports joined, one order in both, the second's header naming a column no import has: the
    # order was imported with the first export's row alone (its rows after the header that could be
    # used refused as reopening it), and shipped short.
    unusable = HEADER + ",gift_note"

    orders = read(
        csv_file(
            row("ext-1", "TSHIRT"), unusable, row("ext-1", "MUG") + ",x", HEADER, row("ext-1", "HOODIE"), row("ext-2")
        )
    )

    assert [(o.line, o.external_id) for o in orders if o.error is None] == [(7, "ext-2")]
    assert errors_of(orders) == [
        (3, None, "invalid_header"),
        (5, None, "repeated_header"),
        (4, "ext-1", "invalid_header"),
    ]
    assert [o.line for o in orders if o.external_id == "ext-1"] == [2]  # one order, rejected on its row under line 3


def test_an_order_whose_rows_end_under_a_header_that_cannot_be_used_is_not_imported_short():
    # Its last row was under the joined header that could not be used: the order was imported
    # with its first row alone, and shipped short.
    orders = read(
        csv_file(row("ext-1", "TSHIRT"), HEADER + ",gift_note", row("ext-1", "MUG") + ",x", HEADER, row("ext-2"))
    )

    assert [(o.line, o.external_id) for o in orders if o.error is None] == [(6, "ext-2")]
    assert errors_of(orders) == [
        (3, None, "invalid_header"),
        (5, None, "repeated_header"),
        (4, "ext-1", "invalid_header"),
    ]


def test_an_order_whose_rows_start_under_a_header_that_cannot_be_used_is_not_imported_short():
    # Its first row was under the joined header that could not be used, its last after a header
    # that could: the order was imported with its last row alone, and shipped short.
    orders = read(
        csv_file(
            row("ext-1"),
            HEADER + ",gift_note",
            row("ext-2", "TSHIRT") + ",x",
            HEADER,
            row("ext-2", "MUG"),
            row("ext-3"),
        )
    )

    assert [(o.line, o.external_id) for o in orders if o.error is None] == [(2, "ext-1"), (7, "ext-3")]
    assert errors_of(orders) == [
        (3, None, "invalid_header"),
        (4, "ext-2", "invalid_header"),
        (5, None, "repeated_header"),
        (6, "ext-2", "incomplete_order"),
    ]
    assert "line 4, among the rows of order web/ext-2, is under a CSV header" in error_on(orders, 6).message


def test_an_order_goes_on_across_a_header_that_cannot_be_used_with_no_row_under_it():
    orders = read(csv_file(row("ext-1", "TSHIRT"), HEADER + ",gift_note", HEADER, row("ext-1", "MUG")))

    assert errors_of(orders) == [(3, None, "invalid_header"), (4, None, "repeated_header")]
    [order] = [o for o in orders if o.error is None]
    assert (order.line, [line["sku"] for line in order.body["lines"]]) == (2, ["TSHIRT", "MUG"])


@pytest.mark.parametrize("cells", [{"customer_name": "Channel"}, {"channel": "channel"}])
def test_an_order_with_cells_that_are_column_names_is_an_order_not_a_header(cells: dict[str, str]):
    # The row named channel and external_id, so it was taken for the header of a file joined on,
    # one that could not be used: it and every row after it were refused.
    orders = read(csv_file(row("ext-1"), row("external_id", **cells), row("ext-2")))

    assert errors_of(orders) == []
    assert [o.external_id for o in orders] == ["ext-1", "external_id", "ext-2"]


def test_a_header_only_file_has_no_orders():
    assert read(f"{HEADER}\n".encode()) == []


# --- Chunks and streaming ------------------------------------------------------------------------


def test_chunk_boundaries_do_not_change_what_is_read():
    data = b"\xef\xbb\xbf" + csv_file(
        row("ext-1"), row("ext-1", "MUG", ship_line2='"Floor 3\r\nBack door"'), "", row("ext-2"), newline="\r\n"
    )
    expected = read(data)

    for size in (1, 2, 3, 7, 64):
        assert read(data, chunk=size) == expected


def test_reading_is_lazy_a_file_is_never_read_whole():
    pulled = 0

    def endless() -> Iterator[bytes]:
        nonlocal pulled
        yield (HEADER + "\n").encode()
        for i in itertools.count():
            pulled += 1
            yield (row(f"ext-{i}") + "\n").encode()

    first = list(itertools.islice(OrderFile(endless(), "orders.csv"), 3))

    assert [o.external_id for o in first] == ["ext-0", "ext-1", "ext-2"]
    assert pulled <= 5  # the order after the last one taken closes it, and nothing more is read


@pytest.mark.parametrize(("start", "name"), [(b"\xff", "orders.txt"), (b" ", "orders.csv")])
def test_lines_read_ahead_for_the_format_are_not_held_whole(start: bytes, name: str):
    # Up to 1,000 unreadable or blank lines before the first line of text were held whole while the
    # format was told: 100 lines of 1 MiB that are not UTF-8 took 200 MiB.
    # As many MiB either way (40, held whole 80 as U+FFFD, 40 as spaces: past the bound either way);
    # a blank CSV line is one cell, 128 KiB at most.
    size, count = (1024 * 1024, 40) if start == b"\xff" else (100 * 1024, 400)
    first = jsonl({"channel": "web", "external_id": "ext-1"}) if name == "orders.txt" else csv_file(row("ext-1"))

    def lines() -> Iterator[bytes]:
        for _ in range(count):
            yield start * (size - 1) + b"\n"
        yield first

    tracemalloc.start()
    try:
        orders = list(OrderFile(lines(), name))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert [o.external_id for o in orders if o.error is None] == ["ext-1"]
    assert peak < 16 * 1024 * 1024


def test_physical_lines_keep_their_endings_and_number_a_last_line_without_one():
    lines = list(physical_lines([b"a\r\nb", b"\n\nc"]))

    assert [(line.number, line.text) for line in lines] == [(1, "a\r\n"), (2, "b\n"), (3, "\n"), (4, "c")]


# --- CSV: one broken line costs only its own row (issue 11 item 3) ------------------------------


def test_an_unclosed_quote_is_an_error_on_its_line_and_every_other_row_is_read():
    # Without the reread, the open quote swallowed every row after it into one cell, silently.
    data = csv_file(row("ext-1"), row("ext-2", customer_name='"Ada'), row("ext-3"), row("ext-4"))

    orders = read(data)

    assert errors_of(orders) == [(3, "ext-2", "unclosed_quote")]
    assert [(o.line, o.external_id) for o in orders if not o.rejected] == [(2, "ext-1"), (4, "ext-3"), (5, "ext-4")]
    assert "header has" in error_on(orders, 3).message


def test_a_quote_closed_by_a_later_row_is_an_error_on_its_line_and_the_later_row_is_read():
    data = csv_file(row("ext-1", customer_name='"Ada'), row("ext-2", ship_line1='"1 Main St, Apt 2"'), row("ext-3"))

    orders = read(data)

    assert errors_of(orders) == [(2, "ext-1", "unclosed_quote")]
    assert [o.external_id for o in orders if not o.rejected] == ["ext-2", "ext-3"]
    assert next(o.body["shipping_address"]["line1"] for o in orders if not o.rejected) == "1 Main St, Apt 2"


def test_two_unclosed_quotes_in_one_column_cost_only_their_own_rows():
    # The second quote closed the first, and the row they made of lines 3 to 5 had the header's
    # number of cells: it was taken for one row with line breaks in a cell, and the orders on the
    # lines it swallowed were lost without a word.
    data = csv_file(
        row("ext-1"), row("ext-2", customer_name='"Ada'), row("ext-3"), row("ext-4", customer_name='"Bob'), row("ext-5")
    )

    orders = read(data)

    assert errors_of(orders) == [(3, "ext-2", "unclosed_quote"), (5, "ext-4", "unclosed_quote")]
    assert "it runs on to line 5, over rows of their own" in error_on(orders, 3).message
    assert [o.external_id for o in orders if o.error is None] == ["ext-1", "ext-3", "ext-5"]


def test_an_unclosed_quote_closed_by_a_row_opening_its_own_costs_only_their_own_rows():
    # The quote of line 3 ran on to the one line 4 opens, and line 4, read alone, was no row of
    # the header's width (its own quote swallows its last cells): lines 3 and 4 were taken for
    # one malformed row, and ext-3 was imported from line 5 alone, short of its line 4.
    data = csv_file(
        row("ext-1"),
        row("ext-2", ship_region='"CA'),
        row("ext-3", "TSHIRT", payment_method='"test'),
        row("ext-3", "MUG"),
        row("ext-4"),
    )

    orders = read(data)

    assert errors_of(orders) == [(3, "ext-2", "unclosed_quote"), (4, "ext-3", "unclosed_quote")]
    assert [o.external_id for o in orders if o.error is None] == ["ext-1", "ext-4"]


def test_an_unclosed_quote_running_past_the_cell_limit_costs_only_its_own_row():
    after = [row(f"ext-{i}") for i in range(3, 3 + MAX_FIELD_CHARS // 100 + 50)]
    assert len("\n".join(after)) > MAX_FIELD_CHARS  # the open quote hits the limit inside them

    orders = read(csv_file(row("ext-1"), row("ext-2", customer_name='"Ada'), *after), chunk=4096)

    assert errors_of(orders) == [(3, "ext-2", "field_too_large")]
    assert len([o for o in orders if not o.rejected]) == 1 + len(after)


def test_an_unreadable_line_inside_a_quoted_cell_fails_the_row_it_cuts_and_the_rows_after_are_read():
    data = csv_file(row("ext-1"), row("ext-2", ship_line2='"Floor 3'), "\xff", row("ext-3"))
    data = data.replace("\xff".encode(), b"\xff")

    orders = read(data)

    assert sorted(errors_of(orders)) == [(3, "ext-2", "malformed_row"), (4, None, "invalid_encoding")]
    assert "line 4" in error_on(orders, 3).message
    assert [o.external_id for o in orders if not o.rejected] == ["ext-1", "ext-3"]


@pytest.mark.parametrize(
    "unreadable",
    # None of them says whose row it is (the quote opens in the channel cell).
    ["web,ext-1,\xff", "x" * (MAX_LINE_BYTES + 1), row("ext-1", "MUG", channel='"web')],
    ids=["not-utf8", "too-long", "unclosed-quote"],
)
def test_an_unreadable_row_among_the_rows_of_one_order_rejects_that_order_never_imports_it_without_the_row(
    unreadable: str,
):
    # The rows of one order are adjacent, so a row between two of its rows is one of its own: the
    # order imported without it would ship short (and a re-import, all duplicates, never mends it).
    data = csv_file(row("ext-1"), unreadable, row("ext-1", "HOODIE"), row("ext-2"))
    data = data.replace("\xff".encode(), b"\xff")

    orders = read(data, chunk=4096)

    assert [o.external_id for o in orders if not o.rejected] == ["ext-2"]
    interrupted = next(o for o in orders if o.external_id == "ext-1")
    assert interrupted.error is not None and interrupted.error.code == "incomplete_order"
    assert interrupted.error.line == 4 and "line 3" in interrupted.error.message
    assert 3 in [line for line, _, _ in errors_of(orders)]  # the unreadable row is still reported on its line


def test_an_unreadable_row_rejects_only_the_order_it_interrupts_never_the_next_order_of_several_rows():
    # Once the interrupted order's next row is read, the unreadable row is accounted for: held on,
    # it rejected every order of two rows or more after it as incomplete.
    data = csv_file(row("ext-1"), "web,ext-1,\xff", row("ext-1", "HOODIE"), row("ext-2"), row("ext-2", "MUG"))
    data = data.replace("\xff".encode(), b"\xff")

    orders = read(data)

    assert errors_of(orders) == [(3, None, "invalid_encoding"), (4, "ext-1", "incomplete_order")]
    assert orders[-1].external_id == "ext-2" and orders[-1].line_numbers == (5, 6)


@pytest.mark.parametrize("where", ["first", "last"])
def test_a_row_that_is_not_utf8_fails_the_order_its_identity_names_even_as_its_first_or_last_row(where: str):
    # A Latin-1 export: one byte in a sku makes the row unreadable as UTF-8, but its channel and
    # external_id still say whose row it is. Reported on its own, its order went through short.
    latin1 = row("ext-1", "CAF\xc9")
    rows = [latin1, row("ext-1", "MUG")] if where == "first" else [row("ext-1", "MUG"), latin1]
    data = csv_file(*rows, row("ext-2")).replace("\xc9".encode(), b"\xc9")

    orders = read(data)

    bad_line = 2 if where == "first" else 3
    assert errors_of(orders) == [(bad_line, "ext-1", "invalid_encoding")]
    assert [o.external_id for o in orders] == ["ext-1", "ext-2"]  # one order of two rows, rejected
    assert not orders[1].rejected


def test_a_row_not_utf8_in_its_own_external_id_among_an_order_s_rows_rejects_that_order_never_ships_it_short():
    # A Windows-1252 no-break space pasted after the order number: the row's identity is not the
    # order's as read, so it was taken for another order's, and the order went through without it.
    data = csv_file(row("ext-1"), row("ext-1\xa0", "MUG"), row("ext-1", "HOODIE"), row("ext-2"))
    data = data.replace("\xa0".encode(), b"\xa0")

    orders = read(data)

    assert [o.external_id for o in orders if not o.rejected] == ["ext-2"]
    assert (3, None, "invalid_encoding") in errors_of(orders)


def test_a_row_of_an_order_after_another_order_s_row_not_utf8_reopens_it_never_a_second_order():
    # The row not UTF-8 names ext-2 and closes ext-1: ext-1's row after it is no second, partial
    # ext-1 racing the first through the workers.
    latin1 = row("ext-2", "CAF\xc9")
    data = csv_file(row("ext-1"), latin1, row("ext-1", "MUG")).replace("\xc9".encode(), b"\xc9")

    orders = read(data)

    assert [o.external_id for o in orders if not o.rejected] == ["ext-1"]
    assert errors_of(orders) == [(3, "ext-2", "invalid_encoding"), (4, "ext-1", "order_reopened")]


@pytest.mark.parametrize("where", ["first", "last"])
def test_a_row_not_utf8_with_a_line_break_in_a_cell_fails_the_order_it_names(where: str):
    # Read as one line, the row's first line has fewer cells than the header, so its channel and
    # external_id were not looked at: the order was imported with one line of two.
    address = '"Floor 3\nBack door"'
    latin1 = row("ext-1", "CAF\xc9", ship_line2=address)
    rows = [latin1, row("ext-1", "MUG", ship_line2=address)]
    data = csv_file(*(rows if where == "first" else reversed(rows)), row("ext-2")).replace("\xc9".encode(), b"\xc9")

    orders = read(data)

    bad_line = 2 if where == "first" else 4
    assert (bad_line, "ext-1", "invalid_encoding") in errors_of(orders)
    assert [o.external_id for o in orders if not o.rejected] == ["ext-2"]


@pytest.mark.parametrize("where", ["first", "last"])
@pytest.mark.parametrize(
    "broken",
    [
        row("ext-1", "MUG", customer_name='"Ada'),
        row("ext-1", "MUG", customer_name="x" * (MAX_FIELD_CHARS + 10)),
        row("ext-1", "MUG", customer_name="x" * (MAX_LINE_BYTES + 10)),
    ],
    ids=["unclosed-quote", "huge-cell", "huge-line"],
)
def test_a_broken_row_fails_the_order_its_leading_cells_name_even_as_its_first_or_last_row(broken: str, where: str):
    # A typo'd quote in one row of a two-row order: reported on its own, the order was imported
    # with one line of two, and a re-import of the mended file (a duplicate) never adds it.
    rows = [broken, row("ext-1", "HOODIE")] if where == "first" else [row("ext-1", "HOODIE"), broken]

    orders = read(csv_file(*rows, row("ext-2"), row("ext-3")), chunk=4096)

    bad_line = 2 if where == "first" else 3
    assert [(line, external_id) for line, external_id, _ in errors_of(orders)] == [(bad_line, "ext-1")]
    assert "more problem" not in error_on(orders, bad_line).message  # the cells it could not tell differ from none
    assert [o.external_id for o in orders if not o.rejected] == ["ext-2", "ext-3"]
    assert [o.external_id for o in orders] == ["ext-1", "ext-2", "ext-3"]  # one order of two rows, rejected


def test_a_broken_row_whose_identity_the_break_cuts_is_reported_on_its_own():
    broken = row("ext-2", customer_name="Ada").replace("web,ext-2", 'web,"ext-2', 1)

    orders = read(csv_file(row("ext-1"), broken, row("ext-3")))

    assert errors_of(orders) == [(3, None, "unclosed_quote")]
    assert [o.external_id for o in orders if not o.rejected] == ["ext-1", "ext-3"]


def test_an_unreadable_row_between_two_different_orders_costs_only_its_own_row():
    data = csv_file(row("ext-1"), "web,ext-1,\xff", row("ext-2")).replace("\xff".encode(), b"\xff")

    orders = read(data)

    assert errors_of(orders) == [(3, None, "invalid_encoding")]
    assert [o.external_id for o in orders if not o.rejected] == ["ext-1", "ext-2"]


def test_a_quoted_line_break_with_the_right_cells_is_still_one_row():
    orders = read(csv_file(row("ext-1", ship_line2='"Floor 3\nRing, twice"'), row("ext-2")))

    assert errors_of(orders) == []
    assert [(o.line, o.external_id) for o in orders] == [(2, "ext-1"), (4, "ext-2")]


@pytest.mark.parametrize(
    ("column", "field", "value"),
    [
        # A line of the address starting as the rows of the file do: with the channel and a comma.
        ("ship_line2", ("shipping_address", "line2"), "Back entrance\nweb, ask for Sam"),
        # A line of a name holding as many commas as there are cells before it: read alone, it has
        # the header's number of cells.
        ("customer_name", ("customer", "name"), "Ada Lovelace\nAcme, Inc., Sales, Floor 2, Room 5, East"),
    ],
    ids=["line-starting-with-the-channel", "line-as-wide-as-a-row"],
)
def test_a_quoted_cell_whose_next_line_looks_like_a_row_is_still_one_row(
    column: str, field: tuple[str, str], value: str
):
    # Taken for a quote never closed: a whole order of a spreadsheet's export was rejected, and the
    # lines of its cell were read as rows of their own, each an error naming an order of nothing.
    data = csv_file(row("ext-1", **{column: f'"{value}"'}), row("ext-1", "MUG", **{column: f'"{value}"'}), row("ext-2"))

    orders = read(data)

    assert errors_of(orders) == []
    assert [(o.line, o.external_id, o.line_numbers) for o in orders] == [(2, "ext-1", (2, 4)), (6, "ext-2", (6,))]
    assert orders[0].body[field[0]][field[1]] == value


@pytest.mark.parametrize("cells", ["short", "long"])
def test_a_row_with_a_line_break_in_a_cell_and_a_cell_too_few_or_many_is_one_malformed_row(cells: str):
    # Taken for an unclosed quote: the error said a quote was not closed (it was), and the row's
    # second line, read as a row of its own, was a second error naming "San Francisco".
    multi_line = row("ext-2", ship_line2='"Floor 3\nRing twice"')
    multi_line = multi_line.rsplit(",", 1)[0] if cells == "short" else multi_line + ",extra"

    orders = read(csv_file(row("ext-1"), multi_line, row("ext-3")))

    assert errors_of(orders) == [(3, "ext-2", "malformed_row")]
    assert "the row runs on to line 4: a quoted cell in it holds a line break" in error_on(orders, 3).message
    assert [(o.line, o.external_id) for o in orders if o.error is None] == [(2, "ext-1"), (5, "ext-3")]


def test_an_unclosed_quote_swallowing_a_malformed_row_first_still_costs_only_its_own_rows():
    data = csv_file(row("ext-1"), row("ext-2", customer_name='"Ada'), "web,ext-3,short", row("ext-4"), row("ext-5"))

    orders = read(data)

    assert errors_of(orders) == [(3, "ext-2", "unclosed_quote"), (4, "ext-3", "malformed_row")]
    assert [o.external_id for o in orders if o.error is None] == ["ext-1", "ext-4", "ext-5"]


# The address last, as some exports order their columns: cut inside it, a row has every cell.
ADDRESS_LAST = [column for column in COLUMNS if column != "ship_line1"] + ["ship_line1"]


def address_last(*rows: str) -> str:
    return "\n".join([",".join(ADDRESS_LAST), *rows])


@pytest.mark.parametrize("chunk", [3, 64 * 1024])
def test_a_file_cut_inside_its_last_quoted_cell_fails_that_row_and_imports_the_rows_before(chunk: int):
    # The csv module hands on a cell the file ends in as if it were whole: the order was imported
    # with "12 Main St" for "12 Main Street", and shipped to a truncated address.
    cut = address_last(row_in(ADDRESS_LAST, "ext-1"), row_in(ADDRESS_LAST, "ext-2", ship_line1='"12 Main St'))

    orders = read(cut.encode(), chunk=chunk)

    assert errors_of(orders) == [(3, "ext-2", "malformed_row")]
    assert "the file ends inside a quoted cell of this row" in error_on(orders, 3).message
    assert [o.external_id for o in orders if o.error is None] == ["ext-1"]


def test_a_file_cut_inside_a_quoted_cell_with_a_line_break_fails_the_whole_order_it_cuts():
    # The order's second row is cut: imported without it, the order would ship short.
    cut = address_last(
        row_in(ADDRESS_LAST, "ext-1"),
        row_in(ADDRESS_LAST, "ext-2"),
        row_in(ADDRESS_LAST, "ext-2", sku="MUG", ship_line1='"12 Main Street\nBack d'),
    )

    orders = read(cut.encode())

    assert errors_of(orders) == [(4, "ext-2", "malformed_row")]
    assert "(it runs on to line 5)" in error_on(orders, 4).message
    assert [o.external_id for o in orders if o.error is None] == ["ext-1"]


def test_a_quote_opened_in_a_last_cell_and_never_closed_costs_only_its_own_row():
    # The quote swallowed every row after it into the last cell, which left the row its header's
    # number of cells: it was imported with that cell, and every row after it was lost silently.
    data = csv_file(row("ext-1"), row("ext-2", payment_token='"tok_approve'), row("ext-3"), row("ext-4"))

    orders = read(data)

    assert errors_of(orders) == [(3, "ext-2", "unclosed_quote")]
    assert [o.external_id for o in orders if o.error is None] == ["ext-1", "ext-3", "ext-4"]


def test_an_error_on_a_row_after_a_line_break_in_a_cell_names_the_line_an_editor_shows():
    orders = read(
        csv_file(row("ext-1", ship_line2='"Floor 3\r\nRing twice"'), row("ext-1", "MUG", "x"), newline="\r\n")
    )

    assert errors_of(orders) == [(4, "ext-1", "invalid_number")]


def test_a_header_with_an_unclosed_quote_fails_the_file_naming_its_line():
    data = b"\n" + csv_file(row("ext-1")).replace(b"channel", b'"channel', 1)

    with pytest.raises(ImportFileError) as failure:
        read(data)

    assert failure.value.code == "invalid_header" and "line 2" in failure.value.message


@pytest.mark.parametrize("newline", ["\r", "\r\n", "\n"])
def test_bare_cr_line_endings_are_line_endings(newline: str):
    data = csv_file(row("ext-1"), row("ext-1", "MUG"), row("ext-2", ship_line2='"Floor 3\rBack"'), newline=newline)

    orders = read(data)

    assert errors_of(orders) == []
    assert [(o.line, o.external_id, o.line_numbers) for o in orders] == [(2, "ext-1", (2, 3)), (4, "ext-2", (4,))]
    assert orders[1].body["shipping_address"]["line2"] == "Floor 3\rBack"
    assert orders[1].body["payment"]["token"] == "tok_approve"


def test_bare_cr_endings_split_across_chunks_read_the_same():
    data = csv_file(row("ext-1"), row("ext-1", "MUG"), "", row("ext-2"), newline="\r")
    expected = read(data)

    for size in (1, 2, 3, 7, 64):
        assert read(data, chunk=size) == expected
    assert [o.line for o in expected] == [2, 5]


def test_physical_lines_end_at_a_bare_cr_and_a_crlf_split_across_chunks_is_one_ending():
    lines = list(physical_lines([b"a\r", b"\nb\r", b"c\r", b"\r\n", b"d"]))

    assert [(line.number, line.text) for line in lines] == [(1, "a\r\n"), (2, "b\r"), (3, "c\r"), (4, "\r\n"), (5, "d")]


def test_a_line_arriving_in_many_chunks_is_searched_for_its_end_once_not_again_at_each_chunk(monkeypatch):
    # Each chunk searched the whole of the line held so far again: a line of 1 MiB in chunks of
    # 4 KiB read 128 MiB (a second of CPU in the splitter, growing with the square of the line).
    from functions.import_splitter import readers

    searched = [0]
    line_end = readers._LINE_END

    class Counted:
        def search(self, text: bytes | bytearray, start: int = 0) -> re.Match[bytes] | None:
            searched[0] += len(text) - start
            return line_end.search(text, start)

    monkeypatch.setattr(readers, "_LINE_END", Counted())
    data = b"x" * 100_000 + b"\r" + b"y" * 99_998 + b"\r\nz\n"  # that CRLF split across two chunks

    lines = list(physical_lines(chunks(data, 1000), max_bytes=150_000))

    assert [(line.number, len(line.text or ""), line.problem) for line in lines] == [
        (1, 100_001, None), (2, 100_000, None), (3, 2, None),
    ]  # fmt: skip
    assert searched[0] < 2 * len(data)


def test_a_line_over_the_limit_ended_by_a_crlf_split_across_chunks_is_one_line():
    lines = list(physical_lines([b"x" * 10 + b"\r", b"\nnext\n"], max_bytes=8))

    assert [(line.number, line.text, line.problem) for line in lines] == [
        (1, None, "line_too_long"),
        (2, "next\n", None),
    ]


def test_a_line_over_the_limit_ended_by_a_bare_cr_at_a_chunk_s_end_keeps_the_line_after_it():
    # Old Mac and some spreadsheet exports end lines with a bare CR: dropped with the skipped line,
    # it let the next line run on as part of it, lost without a word.
    lines = list(physical_lines([b"x" * 10 + b"\r", b"next\r", b"more"], max_bytes=8))

    assert [(line.number, line.text, line.problem) for line in lines] == [
        (1, None, "line_too_long"),
        (2, "next\r", None),
        (3, "more", None),
    ]


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
@pytest.mark.parametrize("size", [1, 2, 7, 4096])
def test_the_line_limit_counts_a_lines_content_whatever_ends_it(ending: bytes, size: int):
    # The limit counted the line's ending, one byte for LF and two for CRLF: a line a byte under it
    # was read saved with LF and too long saved with CRLF (as Excel and Windows tools save), and one
    # of exactly the limit was too long either way. Any ending, split across chunks or not, counts
    # the same: nothing.
    data = b"x" * 8 + ending + b"y" * 9 + ending + b"z" * 8
    lines = list(physical_lines(chunks(data, size), max_bytes=8))

    assert [(line.number, line.text, line.problem) for line in lines] == [
        (1, "x" * 8 + ending.decode(), None),
        (2, None, "line_too_long"),
        (3, "z" * 8, None),
    ]


@pytest.mark.parametrize("ending", ["\n", "\r\n"])
def test_a_json_line_of_exactly_the_limit_is_read_with_either_ending(ending: str):
    start = '{"channel": "web", "external_id": "ext-1"'
    line = start + " " * (MAX_LINE_BYTES - len(start) - 1) + "}"
    assert len(line.encode()) == MAX_LINE_BYTES
    data = (line + ending + json.dumps({"channel": "web", "external_id": "ext-2"}) + ending).encode()

    orders = read(data, name="orders.jsonl", chunk=64 * 1024)

    assert errors_of(orders) == []
    assert [o.external_id for o in orders] == ["ext-1", "ext-2"]


# --- JSON Lines ----------------------------------------------------------------------------------


def jsonl(*lines: object) -> bytes:
    return "".join((json.dumps(line) if not isinstance(line, str) else line) + "\n" for line in lines).encode()


@pytest.mark.parametrize("field", ["external_id", "channel", "customer_name"])
def test_a_json_line_with_half_a_character_is_an_error_on_its_line_and_the_other_lines_are_read(field: str):
    # "\ud800" is JSON for half a UTF-16 pair: in an external_id or channel it raised where the
    # order is fingerprinted, and the whole file stopped there, retried until it was given up.
    order = {"channel": "web", "external_id": "ext-2", "customer_name": "Ada"}
    broken = json.dumps(order).replace(f'"{order[field]}"', '"x\\ud800"')
    # A pair written as two escapes is one character (an emoji): text like any other.
    emoji = json.dumps({"channel": "web", "external_id": "ext-3", "name": "Ada \U0001f600"})
    assert "\\ud83d\\ude00" in emoji

    orders = read(jsonl({"channel": "web", "external_id": "ext-1"}, broken, emoji), "orders.jsonl")

    assert errors_of(orders) == [(2, None, "malformed_json")]
    assert "lone surrogate" in error_on(orders, 2).message
    assert [o.external_id for o in orders if o.error is None] == ["ext-1", "ext-3"]


def test_each_json_line_is_an_order_on_its_physical_line():
    first = {"channel": "web", "external_id": "ext-1", "lines": [{"sku": "A", "quantity": 1}, {"sku": "B"}]}

    orders = read(jsonl(first, "", {"channel": "web", "external_id": "ext-2"}), "orders.jsonl")

    assert [(o.line, o.external_id) for o in orders] == [(1, "ext-1"), (3, "ext-2")]
    assert orders[0].body == first
    assert orders[0].line_numbers == (1, 1)


@pytest.mark.parametrize(
    "hostile",
    [
        '{"notes": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"quantity": ' + "9" * 5_000 + "}",
        '{"external_id": "ext-2", "external_id": "ext-3"}',
        '{"external_id": "ext-2", "lines": [{"sku": "A", "quantity": 1e309}]}',
    ],
    ids=["deeply nested", "huge integer", "duplicate keys", "number past a float"],
)
def test_a_hostile_json_line_is_an_error_on_its_line_and_the_others_are_read(hostile: str):
    orders = read(jsonl({"external_id": "ext-1"}, hostile, {"external_id": "ext-4"}), "o.jsonl")

    assert errors_of(orders) == [(2, None, "malformed_json")]
    assert [o.external_id for o in orders if o.error is None] == ["ext-1", "ext-4"]


def test_a_line_that_is_not_a_json_object_is_an_error_on_its_line():
    orders = read(jsonl({"external_id": "ext-1"}, '{"external_id": "ext-2", ', "[1, 2]", {"x": 1}), "o.ndjson")

    assert errors_of(orders) == [(2, None, "malformed_json"), (3, None, "malformed_json")]
    assert len(orders) == 4


def test_jsonl_with_a_byte_order_mark_and_crlf():
    data = b"\xef\xbb\xbf" + jsonl({"external_id": "ext-1"}).replace(b"\n", b"\r\n") + b'{"external_id": "ext-2"}'

    orders = read(data, "orders.jsonl")

    assert [(o.line, o.external_id) for o in orders] == [(1, "ext-1"), (2, "ext-2")]


def test_a_deeply_nested_json_line_is_an_error_on_its_line_and_the_others_are_read():
    # Past the parser's recursion limit, json.loads raised RecursionError and stopped the file. The
    # limit is POST /orders' (core/strict_json.py, MAX_DEPTH), checked before parsing.
    bomb = '{"external_id": "ext-2", "lines": ' + "[" * 100_000 + "]" * 100_000 + "}"
    deep = {"external_id": "ext-3", "lines": [{"sku": "A", "quantity": 1, "note": nested(MAX_DEPTH)}]}
    shallow = {"external_id": "ext-4", "lines": [{"sku": "A", "quantity": 1, "note": nested(25)}]}

    orders = read(jsonl({"external_id": "ext-1"}, bomb, deep, shallow, {"external_id": "ext-5"}), "orders.jsonl")

    assert errors_of(orders) == [(2, None, "malformed_json"), (3, None, "malformed_json")]
    assert all("deeper than" in o.error.message for o in orders if o.rejected)
    assert [o.external_id for o in orders if not o.rejected] == ["ext-1", "ext-4", "ext-5"]


def nested(depth: int) -> object:
    value: object = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def test_jsonl_files_joined_together_keep_no_byte_order_mark_on_the_line_where_one_starts():
    data = b"\xef\xbb\xbf" + jsonl({"external_id": "ext-1"}) + b"\xef\xbb\xbf" + jsonl({"external_id": "ext-2"})

    orders = read(data, "orders.jsonl")

    assert errors_of(orders) == []
    assert [(o.line, o.external_id) for o in orders] == [(1, "ext-1"), (2, "ext-2")]


def test_a_json_line_with_a_comma_after_its_object_is_an_error_naming_the_comma_and_its_order():
    # Reported as "the line is not valid JSON", with no external_id: the merchant looked for an
    # error inside the object.
    data = b'{"channel": "web", "external_id": "ext-1"},\n\n{"channel": "web", "external_id": "ext-2"}'

    orders = read(data, "orders.jsonl")

    assert errors_of(orders) == [(1, "ext-1", "malformed_json")]
    assert "comma after its object" in error_on(orders, 1).message
    assert [(o.line, o.external_id) for o in orders if o.error is None] == [(3, "ext-2")]


@pytest.mark.parametrize(
    "data",
    [
        b'[\n  {"channel": "web", "external_id": "ext-1"},\n  {"channel": "web", "external_id": "ext-2"}\n]\n',
        b'[{"channel": "web", "external_id": "ext-1"}, {"channel": "web", "external_id": "ext-2"}]',
    ],
    ids=["one item a line", "one line"],
)
def test_a_json_array_named_jsonl_fails_as_a_whole_never_imports_one_item_of_many(data: bytes):
    # Read line by line, the array's last item was imported and every other line was an error.
    with pytest.raises(ImportFileError) as failure:
        OrderFile(chunks(data, 5), "orders.jsonl")

    assert failure.value.code == "unknown_format"
    assert "a JSON array cannot be imported" in failure.value.message


@pytest.mark.parametrize("name", ["orders.jsonl", "orders.txt"])
def test_pretty_printed_json_objects_fail_as_a_whole_not_as_an_error_a_line(name: str):
    # Each line of each order was an error of its own: six "orders" failed for two.
    order = json.dumps({"channel": "web", "external_id": "ext-1"}, indent=2)

    with pytest.raises(ImportFileError) as failure:
        OrderFile(chunks(f"\n{order}\n{order}\n".encode(), 5), name)

    assert failure.value.code == "unknown_format"
    assert "over several lines each (line 2 opens one" in failure.value.message


@pytest.mark.parametrize(("before", "line"), [(b"", 1), (b"\xef\xbb\xbf\n", 2)], ids=["header first", "bom, blank"])
@pytest.mark.parametrize("separator", [",", ";"])
@pytest.mark.parametrize("name", ["orders.jsonl", "orders.ndjson"])
def test_a_csv_file_named_as_json_lines_fails_as_a_whole_saying_it_is_csv(
    name: str, separator: str, before: bytes, line: int
):
    # Read as JSON Lines, its header and every row were each a malformed_json line: a file of 2
    # orders reported 3 failed "orders" and named no cause.
    data = before + csv_file(row("ext-1"), row("ext-2")).replace(b",", separator.encode())

    with pytest.raises(ImportFileError) as failure:
        OrderFile(chunks(data, 5), name)

    assert failure.value.code == "unknown_format"
    assert failure.value.message == (
        f"{name} is CSV, not JSON Lines: its line {line} is a CSV header naming channel and external_id "
        "(name the file .csv, or send each order as a JSON object on a line of its own)"
    )


@pytest.mark.parametrize(
    "first",
    [
        '{"channel": "web", "external_id": "ext-1", "currency": "USD"',  # cut short
        "{channel: web, external_id: ext-1}",  # keys unquoted
        'channel: "web", external_id: "ext-1"',  # no braces
        '"channel,external_id"',  # JSON (a string): not an object, not a header
        "sep=;",  # a CSV separator line: in JSON Lines, a bad line, never skipped unreported
    ],
)
def test_a_json_lines_file_whose_first_line_is_bad_json_reports_that_line_and_reads_the_rest(first: str):
    # Only a header of the import's columns makes a .jsonl file CSV: a bad first order is its line's error.
    orders = read(jsonl(first, {"channel": "web", "external_id": "ext-2"}), "orders.jsonl")

    assert errors_of(orders) == [(1, None, "malformed_json")]
    assert [(o.line, o.external_id) for o in orders if o.error is None] == [(2, "ext-2")]


def test_jsonl_with_bare_cr_line_endings_reads_every_line():
    data = jsonl({"external_id": "ext-1"}, {"external_id": "ext-2"}).replace(b"\n", b"\r")
    data += b'{"external_id": "ext-3"}\r{"external_id": "ext-4"}\n'

    orders = read(data, "orders.jsonl")

    assert [(o.line, o.external_id) for o in orders] == [(1, "ext-1"), (2, "ext-2"), (3, "ext-3"), (4, "ext-4")]


# --- Format ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("incoming/orders", csv_file(row()), CSV),
        ("incoming/orders", b"\n\n" + jsonl({"external_id": "ext-1"}), JSONL),
        ("incoming/export.json", jsonl({"external_id": "ext-1"}), JSONL),
        ("incoming/export.txt", b"\xef\xbb\xbf" + csv_file(row()), CSV),
        ("incoming/ORDERS.CSV", csv_file(row()), CSV),
        ("incoming/orders.jsonl", jsonl({"external_id": "ext-1"}), JSONL),
    ],
)
def test_the_format_comes_from_the_extension_or_else_from_the_content(name: str, data: bytes, expected: str):
    orders = OrderFile(chunks(data, 5), name)

    assert orders.format == expected
    assert [o.external_id for o in orders] == ["ext-1"]


@pytest.mark.parametrize(
    ("name", "data", "mentions"),
    [
        ("incoming/orders.xlsx", csv_file(row()), ".xlsx files cannot be imported"),
        ("incoming/orders", b"order,id\n1,2\n", "cannot tell the format"),
        ("incoming/orders.json", b'[{"external_id": "ext-1"}]', "JSON array"),
    ],
)
def test_an_unknown_format_fails_with_a_clear_error(name: str, data: bytes, mentions: str):
    with pytest.raises(ImportFileError) as failure:
        OrderFile(chunks(data, 5), name)

    assert failure.value.code == "unknown_format"
    assert mentions in failure.value.message


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("incoming/orders.csv", b""),
        ("incoming/orders.csv", b"\n\r\n  \n"),
        ("incoming/orders.csv", b"\xef\xbb\xbf,,,\r\n,,,\r\n"),
        ("incoming/orders", b""),
    ],
)
def test_an_empty_file_fails_as_a_whole_saying_so(name: str, data: bytes):
    # The import completed with 0 orders (an upload or export that failed looked like a success),
    # or failed as "unknown_format".
    with pytest.raises(ImportFileError) as failure:
        OrderFile(chunks(data, 5), name)

    assert failure.value.code == "empty_file"
    assert (
        failure.value.message
        == f"{name.rsplit('/', 1)[-1]} is empty (no text but blank lines): there is nothing to import"
    )


@pytest.mark.parametrize("data", [b"", b"\xef\xbb\xbf\n\n", b"\n  \r\n"])
def test_an_empty_json_lines_file_is_an_import_of_no_orders(data: bytes):
    # A feed's day without orders: JSON Lines has no header to say so, as a CSV's header alone does.
    orders = OrderFile(chunks(data, 5), "incoming/orders.jsonl")

    assert list(orders) == []


def test_a_jsonl_file_whose_first_line_cannot_be_read_is_not_empty():
    orders = read(b"\xfa\xfb\n" + jsonl({"external_id": "ext-1"}), "orders.jsonl")

    assert errors_of(orders) == [(1, None, "invalid_encoding")]
    assert [o.external_id for o in orders if o.error is None] == ["ext-1"]


@pytest.mark.parametrize("name", ["incoming/orders.jsonl", "incoming/orders.csv", "incoming/orders"])
def test_a_gzip_file_fails_as_a_whole_whatever_its_name(name: str):
    # Named .jsonl, each stretch of compressed bytes between two newline bytes was reported as an
    # order that is not JSON: a report of junk "orders", the file not even failed.
    data = gzip.compress(jsonl(*({"channel": "web", "external_id": f"ext-{i}"} for i in range(200))))
    assert data.count(b"\n") > 0

    with pytest.raises(ImportFileError) as failure:
        OrderFile(chunks(data, 1), name)

    assert failure.value.code == "unknown_format"
    assert "gzip" in failure.value.message


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-16-le"])
@pytest.mark.parametrize("name", ["incoming/orders.jsonl", "incoming/orders.csv"])
def test_a_utf16_file_fails_as_a_whole_naming_its_encoding(name: str, encoding: str):
    # Every line was reported as not UTF-8 (or the header as unreadable), none saying why.
    text = ("\ufeff" if encoding != "utf-16" else "") + HEADER + "\n" + row("ext-1") + "\n"
    data = text.encode(encoding)

    with pytest.raises(ImportFileError) as failure:
        OrderFile(chunks(data, 1), name)

    assert failure.value.code == "invalid_encoding"
    assert "UTF-16" in failure.value.message


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
@pytest.mark.parametrize("name", ["incoming/orders.jsonl", "incoming/orders.csv", "incoming/orders.txt"])
def test_a_utf16_file_without_a_byte_order_mark_fails_as_a_whole_naming_its_encoding(name: str, encoding: str):
    # As `iconv -t UTF-16LE` or .NET's Encoding.Unicode write it: no byte order mark, a NUL byte
    # beside each ASCII one, which UTF-8 reads as text. A CSV failed invalid_header, listing columns
    # spelt with NULs; JSON Lines made one malformed_json error a line; a .txt, unknown_format.
    content = jsonl({"channel": "web", "external_id": "ext-1"}).decode() if name.endswith(".jsonl") else None
    text = content or "\n" + HEADER + "\n" + row("ext-1") + "\n"
    data = text.encode(encoding)

    with pytest.raises(ImportFileError) as failure:
        OrderFile(chunks(data, 1), name)

    assert failure.value.code == "invalid_encoding"
    assert "UTF-16" in failure.value.message and "\x00" not in failure.value.message


@pytest.mark.parametrize(
    ("encoding", "mark"), [("utf-32-le", "\ufeff"), ("utf-32-be", "\ufeff"), ("utf-32-le", ""), ("utf-32-be", "")]
)
@pytest.mark.parametrize("name", ["incoming/orders.jsonl", "incoming/orders.csv"])
def test_a_utf32_file_fails_as_a_whole_naming_its_encoding(name: str, encoding: str, mark: str):
    # Its little-endian byte order mark (FF FE 00 00) starts with UTF-16's (FF FE), and without a
    # mark its first byte is beside a NUL as UTF-16's is: the file was refused as "UTF-16 text", and
    # saved as UTF-16 it would fail the same way. Big-endian, with its mark (00 00 FE FF) or
    # without, it was read as UTF-8: every line an error, none saying why.
    data = (mark + HEADER + "\n" + row("ext-1") + "\n").encode(encoding)

    with pytest.raises(ImportFileError) as failure:
        OrderFile(chunks(data, 1), name)

    assert failure.value.code == "invalid_encoding"
    assert "UTF-32" in failure.value.message and "UTF-16" not in failure.value.message


# --- Ids and error locations ------------------------------------------------------------------------


def test_an_import_id_is_stable_for_one_stored_object():
    first = import_id_for("bucket", "incoming/a.csv", '"etag-1"')

    assert first == import_id_for("bucket", "incoming/a.csv", "etag-1")
    assert first.startswith("imp_") and len(first) == 28
    assert first != import_id_for("bucket", "incoming/a.csv", "etag-2")
    assert first != import_id_for("bucket", "incoming/b.csv", "etag-1")


def test_an_error_about_an_order_line_names_its_row_and_its_column():
    assert line_of_field("lines[1].quantity", 10, (10, 11, 13)) == 11
    assert line_of_field("lines[5].sku", 10, (10, 11)) == 10
    assert line_of_field("customer.email", 10, (10, 11)) == 10
    assert column_of_field("lines[1].quantity") == "quantity"
    assert column_of_field("customer.email") == "customer_email"
    assert column_of_field("shipping_address.postal_code") == "ship_postal_code"
    assert column_of_field("promo_codes") == "promo_codes"


def test_a_field_is_named_as_the_author_of_the_file_wrote_it():
    assert field_in_file("customer.email", CSV) == "customer_email"
    assert field_in_file("customer.email", JSONL) == "customer.email"
    assert field_in_file("customer.email", None) == "customer.email"  # sent straight to the queue


def test_a_json_line_repeating_an_order_of_an_earlier_line_is_an_error_on_its_line():
    # Both queued, the two lines raced through the workers: whichever was captured first became the
    # order, and the other counted as its duplicate.
    first = {"channel": "web", "external_id": "ext-1", "lines": [{"sku": "A", "quantity": 1}]}
    again = {**first, "lines": [{"sku": "B", "quantity": 5}]}
    other_channel = {**first, "channel": "pos"}

    orders = read(jsonl(first, {"channel": "web", "external_id": "ext-2"}, again, other_channel), "orders.jsonl")

    assert errors_of(orders) == [(3, "ext-1", "order_repeated")]
    assert next((o.line, o.body) for o in orders if not o.rejected) == (1, first)
    assert [o.line for o in orders if not o.rejected] == [1, 2, 4]


def test_a_joined_header_with_a_line_break_in_a_cell_is_reported_and_its_rows_not_read_by_line_1_s():
    # Read as an order row (external_id "external_id", invalid_number), the rows after it were read
    # by line 1's columns: its export's customer and recipient names went into each other's silently.
    swapped = list(COLUMNS)
    first, second = swapped.index("customer_name"), swapped.index("ship_name")
    swapped[first], swapped[second] = swapped[second], swapped[first]
    names = {"customer_name": "Ada Buyer", "ship_name": "Bob Recipient"}
    broken = ",".join(swapped).replace("shipping_method", '"shipping_method\n"')

    orders = read(csv_file(row("ext-1", **names), broken, row_in(swapped, "ext-2", **names), HEADER, row("ext-3")))

    assert errors_of(orders) == [
        (3, None, "invalid_header"),
        (5, "ext-2", "invalid_header"),
        (6, None, "repeated_header"),
    ]
    assert "a quote opened on it is not closed on its line" in error_on(orders, 3).message
    assert "under the CSV header of line 3, which cannot be used" in error_on(orders, 5).message
    assert [(o.line, o.external_id) for o in orders if o.error is None] == [(2, "ext-1"), (7, "ext-3")]


@pytest.mark.parametrize("closed_by_a_later_row", [False, True])
def test_a_joined_header_whose_quote_swallows_rows_is_reported_and_its_rows_not_read_by_line_1_s(
    closed_by_a_later_row: bool,
):
    # Its rows were read again after it, by line 1's columns: the customer and recipient names of
    # its export went into each other's silently.
    swapped = list(COLUMNS)
    first, second = swapped.index("customer_name"), swapped.index("ship_name")
    swapped[first], swapped[second] = swapped[second], swapped[first]
    names = {"customer_name": "Ada Buyer", "ship_name": "Bob Recipient"}
    broken = ",".join(swapped).replace("shipping_method", '"shipping_method')
    later = row_in(swapped, "ext-3", **names)
    if closed_by_a_later_row:
        later = later.replace("Ada Buyer", '"Ada Buyer"')

    orders = read(csv_file(row("ext-1", **names), broken, row_in(swapped, "ext-2", **names), later))

    assert [(o.line, o.external_id) for o in orders if o.error is None] == [(2, "ext-1")]
    assert errors_of(orders)[0] == (3, None, "invalid_header")
    assert sorted(o.external_id for o in orders if o.error is not None and o.line > 3) == ["ext-2", "ext-3"]


def test_a_joined_header_whose_quote_runs_into_a_line_not_utf8_is_reported_and_its_rows_not_read_by_line_1_s():
    # The header was a malformed row (order "external_id", cut by the line not UTF-8), and the rows
    # after it were read by line 1's columns: its export's customer and recipient names went into
    # each other's silently.
    swapped = list(COLUMNS)
    first, second = swapped.index("customer_name"), swapped.index("ship_name")
    swapped[first], swapped[second] = swapped[second], swapped[first]
    names = {"customer_name": "Ada Buyer", "ship_name": "Bob Recipient"}
    broken = ",".join(swapped).replace("shipping_method", '"shipping_method').encode() + b"\nf\xfcr\n"
    rows = [row_in(swapped, external_id, **names) for external_id in ("ext-2", "ext-3")]

    orders = read(csv_file(row("ext-1", **names)) + broken + "\n".join(rows).encode() + b"\n")

    assert [(o.line, o.external_id) for o in orders if o.error is None] == [(2, "ext-1")]
    assert errors_of(orders)[0] == (3, None, "invalid_header")
    assert sorted(o.external_id for o in orders if o.error is not None and o.line > 4) == ["ext-2", "ext-3"]


def test_an_order_with_cells_that_are_column_names_opening_a_quote_is_a_broken_row_not_a_header():
    # Its cells before the quote named channel and external_id, so it was taken for the header of a
    # file joined on, one that could not be used: every order after it was refused.
    broken = row("external_id", customer_name="Channel").replace(",TSHIRT,", ',"TSHIRT,')

    orders = read(csv_file(row("ext-1"), broken, row("ext-2"), row("ext-3")))

    assert errors_of(orders) == [(3, "external_id", "unclosed_quote")]
    assert [o.external_id for o in orders if o.error is None] == ["ext-1", "ext-2", "ext-3"]


def test_a_joined_header_by_semicolons_with_a_line_break_in_a_cell_is_reported_and_each_order_under_it():
    # Split by semicolons on its first line only, its quoted cell was left open: the next line
    # started a cell that swallowed the rest of the file, one error ("cut short") on line 4 for
    # every order of that export, none on their own lines.
    broken = ";".join(COLUMNS).replace("shipping_method", '"shipping_method\n"')
    rows = [row(external_id).replace(",", ";") for external_id in ("ext-2", "ext-3")]

    orders = read(csv_file(row("ext-1"), broken, *rows))

    assert errors_of(orders) == [
        (3, None, "invalid_header"),
        (5, "ext-2", "invalid_header"),
        (6, "ext-3", "invalid_header"),
    ]
    assert "a quote opened on it is not closed on its line" in error_on(orders, 3).message
    assert [(o.line, o.external_id) for o in orders if o.error is None] == [(2, "ext-1")]


def test_every_code_a_bad_line_of_an_import_is_reported_with_is_named_in_the_readmes_bulk_import():
    # Before: seven codes a report gives (`inconsistent_order`, `order_reopened`, `too_many_lines`,
    # `missing_channel`, `line_too_long`, ...) were named nowhere in the README, and five more only
    # outside Bulk import, so an integrator mapping each code to what its system does next had no word.
    import ast
    import re
    from pathlib import Path

    from tests.readme_code import section

    def strings(node: ast.AST, function: ast.FunctionDef) -> set[str]:
        """The codes `node` may be: its string constants, and those given a name it reads."""
        names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        given = [n.value for n in ast.walk(function) if isinstance(n, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id in names for t in n.targets)]  # fmt: skip
        found = {c.value for n in [node, *given] for c in ast.walk(n) if isinstance(c, ast.Constant)}
        if isinstance(node, ast.JoinedStr):  # f"missing_{missing}"
            prefix = node.values[0].value  # type: ignore[attr-defined]
            return {prefix + value for value in found - {prefix} if isinstance(value, str)}
        return {value for value in found if isinstance(value, str)}

    root = Path(__file__).resolve().parents[2]
    codes: set[str] = {"line_too_long", "invalid_encoding"}  # a physical line's `problem`, its error's code
    for source in ("functions/import_splitter/readers.py", "core/import_service.py"):
        tree = ast.parse((root / source).read_text())
        for function in (node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)):
            for call in ast.walk(function):
                if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "LineError":
                    (code,) = [*call.args[2:3], *(k.value for k in call.keywords if k.arg == "code")]
                    codes |= strings(code, function)
    # Not a code: a message a condition reads. Not met: _unreadable's fallback (a line without text
    # always has its `problem`).
    codes = {code for code in codes if re.fullmatch(r"[a-z]+(?:_[a-z]+)+", code)} - {"unreadable_line"}
    assert {"inconsistent_order", "missing_channel", "missing_external_id", "line_too_long"} <= codes

    named = set(re.findall(r"`([a-z]+(?:_[a-z]+)+)`", section("## Bulk import")))
    assert sorted(codes - named) == []
