"""Card numbers never stored, echoed or logged, on any path: import files, messages sent straight
to the import queue, ids and query parameter names, and the local gateway's access log."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.test import Client

from tests.builders import csv_file, csv_row, order_body
from tests.e2e.client import assert_error
from tests.integration.import_support import ImportAws, create_import_resources, report, seed_catalog, split, worker
from tests.integration.in_process import InProcessApi, in_process_api

CARD = "4111111111111111"
# How the same number arrives: grouped by any common separator, glued to a prefix.
WRITTEN = [
    "4111111111111111",
    "4111.1111.1111.1111",
    "4111-1111-1111-1111",
    "4111 1111 1111 1111",
    "web-4111111111111111",
    "web-4111.1111.1111.1111",
    "ord4111111111111111",
]


def carries_card(text: str) -> bool:
    """Whether `text` holds the test card number, however grouped or percent-encoded."""
    return CARD in re.sub(r"(?<=\d)(?:[ .\-]|%20|%2[Ee]|%2[Dd])(?=\d)", "", text)


# --- Imports -------------------------------------------------------------------------------------


@pytest.fixture
def stack(aws: Any, monkeypatch: pytest.MonkeyPatch) -> ImportAws:
    imports = create_import_resources(aws, monkeypatch)
    seed_catalog()
    return imports


def test_a_card_number_as_external_id_in_a_csv_file_is_kept_nowhere_the_report_is_read(stack: ImportAws):
    from infra.import_file import summary

    rows = [csv_row(written) for written in WRITTEN]
    import_id = split(stack, "incoming/orders.csv", csv_file(csv_row("ext-1"), *rows))
    stack.drain(worker)

    imported = report(import_id)  # what GET /imports/{id} answers
    assert (imported["imported"], imported["failed"]) == (1, len(WRITTEN))
    assert {e["code"] for e in imported["errors"]} == {"card_data_rejected"}
    assert [e["external_id"] for e in imported["errors"]] == [
        "[card number]",
        "[card number]",
        "[card number]",
        "[card number]",
        "web-[card number]",
        "web-[card number]",
        "ord[card number]",
    ]
    assert not carries_card(json.dumps(imported))
    assert not carries_card("\n".join(summary(imported, 100)))  # what `make import` prints


def test_a_card_number_in_a_jsonl_line_is_masked_in_its_error(stack: ImportAws):
    lines = [
        json.dumps(order_body(channel="market", external_id="web-4111.1111.1111.1111")),
        json.dumps(order_body(channel="market", external_id="m-1", notes="card 4111-1111-1111-1111")),
    ]

    import_id = split(stack, "incoming/orders.jsonl", ("\n".join(lines) + "\n").encode())

    imported = report(import_id)
    assert [(e["line"], e["external_id"], e["code"]) for e in imported["errors"]] == [
        (1, "web-[card number]", "card_data_rejected"),
        (2, "m-1", "card_data_rejected"),
    ]
    assert not carries_card(json.dumps(imported))


def test_a_card_number_in_the_files_name_is_not_kept_as_its_source(stack: ImportAws):
    import_id = split(stack, "incoming/orders-4111.1111.1111.1111.csv", csv_file(csv_row("ext-1")))

    assert report(import_id)["source"] == f"s3://{stack.bucket}/incoming/orders-[card number].csv"


def test_an_error_kept_before_masking_is_masked_when_read(stack: ImportAws):
    from core.import_service import ImportReport

    kept = report(split(stack, "incoming/orders.csv", csv_file(csv_row("ext-1"))))
    kept["errors"] = [{"line": 2, "external_id": f"web-{CARD}", "code": "card_data_rejected", "message": CARD}]

    shown = ImportReport.model_validate(kept).model_dump(mode="json")

    assert shown["errors"] == [
        {"line": 2, "external_id": "web-[card number]", "code": "card_data_rejected", "message": "[card number]"}
    ]


@pytest.fixture
def worker_log(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    from functions.import_worker.app import logger

    written = io.StringIO()
    monkeypatch.setattr(logger.registered_handler, "stream", written)
    return written


@pytest.mark.parametrize("external_id", WRITTEN)
def test_a_message_sent_straight_to_the_queue_with_a_card_number_is_rejected_without_logging_it(
    stack: ImportAws, worker_log: io.StringIO, external_id: str
):
    body = order_body(channel="erp", external_id=external_id, lines=[{"sku": "TSHIRT", "quantity": 1}])
    stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=json.dumps(body))

    stack.drain(worker)

    logged = worker_log.getvalue()
    assert "order from the import queue rejected" in logged
    assert "card_data_rejected" in logged
    assert not carries_card(logged)


# --- The API and the local gateway's access log -----------------------------------------------------


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api() as started:
        yield started


@pytest.mark.parametrize("written", WRITTEN)
def test_a_card_number_in_a_path_segment_however_written_is_refused_and_not_echoed(api: InProcessApi, written: str):
    response = api.get(f"/orders/{written}")

    assert_error(response, 422, "card_data_rejected", "order_id")
    assert not carries_card(response.text)


def test_a_server_id_whose_digits_pass_the_luhn_check_is_an_id_not_card_data(api: InProcessApi):
    # Ids are base32 (digits 2-7): "2222222222222224" passes the Luhn check (found by schemathesis).
    response = api.get("/orders/ord_2222222222222224tkznege7")

    assert_error(response, 404, "not_found")
    assert_error(api.get("/orders/ord_2222222222222224"), 422, "card_data_rejected", "order_id")  # not an id


# A space or a dash as typed or pasted into free text: a no-break space (web pages, PDFs), the
# narrow one French writes numbers with, a thin or an ideographic space, the en dash a word
# processor makes of a hyphen, a non-breaking hyphen, a minus sign, the full-width forms.
OTHER_SEPARATORS = ["\u00a0", "\u202f", "\u2009", "\u3000", "\u2013", "\u2011", "\u2212", "\uff0d", "\uff0e"]


@pytest.mark.parametrize("separator", OTHER_SEPARATORS, ids=[f"U+{ord(s):04X}" for s in OTHER_SEPARATORS])
def test_a_card_number_grouped_by_another_space_or_dash_in_a_name_is_refused_and_not_stored(
    api: InProcessApi, separator: str
):
    written = separator.join(["4111", "1111", "1111", "1111"])
    body = order_body(external_id=f"sep-{ord(separator):x}")
    body["customer"]["name"] = f"Ada {written}"
    body["shipping_address"]["line2"] = written

    response = api.post("/orders", json=body)

    error = assert_error(response, 422, "card_data_rejected")
    assert [d["field"] for d in error["details"]] == ["customer.name", "shipping_address.line2"]
    assert written not in response.text


@pytest.mark.parametrize("written", WRITTEN)
def test_a_card_number_as_a_query_parameter_name_is_refused_without_echoing_it(api: InProcessApi, written: str):
    response = api.get("/orders", params={written: "x"})

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "card_data_rejected"
    assert not carries_card(response.text)


def raw_get(api: InProcessApi, target: str) -> Any:
    """GET `target` as sent, query string included, through the gateway's WSGI app (which logs)."""
    return Client(api.gateway).get(target, headers={"Authorization": f"Bearer {api.admin_key}"})


def test_a_card_number_in_any_value_of_a_repeated_query_parameter_is_refused(api: InProcessApi):
    response = raw_get(api, "/orders?customer_id=4111.1111.1111.1111&customer_id=cus_1")

    assert response.status_code == 422
    assert response.json["error"]["details"] == [
        {"field": "customer_id", "message": "looks like a payment card number"}
    ]


def test_a_tracking_number_in_a_query_is_not_card_data(api: InProcessApi):
    from plugins.flat_rate_carrier import tracking_number

    assert api.get("/orders", params={"customer_id": tracking_number("shp_00000005")}).status_code == 200


@pytest.mark.parametrize(
    "target",
    [
        "/orders/4111.1111.1111.1111",
        "/orders/4111%2E1111%2E1111%2E1111",
        "/orders/web-4111-1111-1111-1111",
        "/orders/4111%201111%201111%201111",
        "/orders?4111.1111.1111.1111=1",
        "/orders?web-4111111111111111",
        "/orders?limit=5&x4111111111111111y=1",
    ],
)
def test_the_access_log_masks_a_card_number_in_a_path_or_query_parameter_name(
    api: InProcessApi, caplog: pytest.LogCaptureFixture, target: str
):
    caplog.set_level(logging.INFO, logger="infra.local.http")

    response = raw_get(api, target)

    assert response.status_code == 422
    logged = [r.getMessage() for r in caplog.records if r.name == "infra.local.http"]
    assert len(logged) == 1 and "[card number]" in logged[0], logged
    assert not carries_card(logged[0])
