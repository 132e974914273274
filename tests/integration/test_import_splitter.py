"""The import splitter under moto: S3 event in, orders on the import queue, bad rows on the import."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.response import StreamingBody

from core.imports import import_id_for
from functions.adapters.imports import SqsOrderQueue
from tests.builders import csv_file, csv_row
from tests.integration.import_support import (
    ImportAws,
    before_puts,
    before_updates,
    context,
    create_import_resources,
    error_pk,
    refuse_an_error_and_its_fallback,
    refuse_puts,
    report,
)
from tests.integration.import_support import split as split_file


@pytest.fixture
def stack(aws: Any, monkeypatch: pytest.MonkeyPatch) -> ImportAws:
    return create_import_resources(aws, monkeypatch)


def queued(stack: ImportAws) -> list[dict[str, Any]]:
    """Every message on the import queue (consumed)."""
    messages: list[dict[str, Any]] = []
    while True:
        batch = stack.sqs.receive_message(
            QueueUrl=stack.queue_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
        ).get("Messages", [])
        if not batch:
            return messages
        messages.extend(batch)


def attributes(message: dict[str, Any]) -> dict[str, str]:
    return {name: value["StringValue"] for name, value in message.get("MessageAttributes", {}).items()}


def test_a_csv_file_becomes_one_message_per_order_sent_in_batches_of_ten(stack: ImportAws, monkeypatch):
    batches: list[int] = []
    send = SqsOrderQueue.flush

    def counting_flush(queue: SqsOrderQueue) -> None:
        batches.append(len(queue._batch))
        send(queue)

    monkeypatch.setattr(SqsOrderQueue, "flush", counting_flush)
    rows = [csv_row(f"ext-{i:02d}") for i in range(23)]
    rows[3:3] = [csv_row("ext-02", "MUG", "2")]  # a second line of ext-02

    import_id = split_file(stack, "incoming/orders.csv", csv_file(*rows))

    assert [b for b in batches if b] == [10, 10, 3]
    messages = queued(stack)
    assert len(messages) == 23
    by_line = {int(attributes(m)["line"]): m for m in messages}
    second = by_line[4]
    found = attributes(second)
    signature = found.pop("signature")
    assert found == {"import_id": import_id, "line": "4", "format": "csv", "line_numbers": "4,5"}
    assert len(signature) == 64 and set(signature) <= set("0123456789abcdef")  # HMAC-SHA256, hex
    body = json.loads(second["Body"])
    assert body["external_id"] == "ext-02"
    assert body["lines"] == [{"sku": "TSHIRT", "quantity": 1}, {"sku": "MUG", "quantity": 2}]
    imported = report(import_id)
    assert imported | {"created_at": None, "updated_at": None} == {
        "id": import_id,
        "source": f"s3://{stack.bucket}/incoming/orders.csv",
        "status": "running",
        "format": "csv",
        "total": 23,
        "total_final": True,
        "imported": 0,
        "duplicates": 0,
        "failed": 0,
        "errors": [],
        "created_at": None,
        "updated_at": None,
    }


def test_the_object_is_streamed_in_chunks_never_read_whole(stack: ImportAws, monkeypatch):
    reads: list[int | None] = []
    read = StreamingBody.read

    def recorded_read(body: StreamingBody, amt: int | None = None) -> bytes:
        reads.append(amt)
        return read(body, amt)

    monkeypatch.setattr(StreamingBody, "read", recorded_read)
    monkeypatch.setattr("functions.adapters.imports.CHUNK_BYTES", 1024)
    data = csv_file(*(csv_row(f"ext-{i}") for i in range(40)))

    split_file(stack, "incoming/orders.csv", data)

    assert None not in reads  # never read() without a size: the body is consumed chunk by chunk
    assert len(reads) > len(data) // 1024


def test_rows_that_are_not_orders_are_recorded_on_the_import_and_never_queued(stack: ImportAws):
    data = csv_file(
        csv_row("ext-1"),
        csv_row("ext-2", quantity="two"),
        csv_row("ext-3"),
        csv_row("ext-1", "MUG"),  # reopens ext-1
        csv_row("ext-4", payment_token="4111 1111 1111 1111"),
    )

    import_id = split_file(stack, "incoming/orders.csv", data)

    assert sorted(json.loads(m["Body"])["external_id"] for m in queued(stack)) == ["ext-1", "ext-3"]
    imported = report(import_id)
    assert (imported["total"], imported["failed"], imported["status"]) == (5, 3, "running")
    assert [(e["line"], e["external_id"], e["code"]) for e in imported["errors"]] == [
        (3, "ext-2", "invalid_number"),
        (5, "ext-1", "order_reopened"),
        (6, "ext-4", "card_data_rejected"),
    ]
    assert "4111" not in json.dumps(imported)


def test_two_exports_joined_into_one_file_import_every_order_and_count_the_repeated_header_as_failed(
    stack: ImportAws,
):
    # A row that is not an order counts in `failed` like any other: `errors` lists what `failed`
    # counts, and the import ends completed_with_errors, so the merchant looks at the file.
    data = csv_file(csv_row("ext-1"), csv_row("ext-2")) + csv_file(csv_row("ext-3"))

    import_id = split_file(stack, "incoming/joined.csv", data)

    assert sorted(json.loads(m["Body"])["external_id"] for m in queued(stack)) == ["ext-1", "ext-2", "ext-3"]
    imported = report(import_id)
    assert (imported["total"], imported["failed"]) == (4, 1)
    assert [(e["line"], e["external_id"], e["code"]) for e in imported["errors"]] == [(4, None, "repeated_header")]


def test_a_card_number_on_a_later_row_of_an_order_is_reported_on_that_row(stack: ImportAws):
    # The error named the order's first line: the author looked for a card number on a row that
    # has none.
    data = csv_file(csv_row("ext-1"), csv_row("ext-1", "MUG"), csv_row("ext-1", "4111 1111 1111 1111"))

    import_id = split_file(stack, "incoming/orders.csv", data)

    assert queued(stack) == []
    imported = report(import_id)
    (error,) = imported["errors"]
    assert (error["line"], error["external_id"], error["code"]) == (4, "ext-1", "card_data_rejected")
    assert "4111" not in json.dumps(imported)


def test_card_numbers_on_two_rows_of_an_order_are_reported_on_the_first_of_them(stack: ImportAws):
    # As every error of a line: the row an editor jumps to is the first one to fix.
    data = csv_file(csv_row("ext-1"), csv_row("ext-1", "4111 1111 1111 1111"), csv_row("ext-1", "5500 0000 0000 0004"))

    import_id = split_file(stack, "incoming/orders.csv", data)

    (error,) = report(import_id)["errors"]
    assert (error["line"], error["external_id"], error["code"]) == (3, "ext-1", "card_data_rejected")


def test_a_card_number_error_in_a_csv_file_names_the_columns_not_body_paths(stack: ImportAws):
    # Every other row error of a CSV names its columns; this one said `lines[2].sku`, a path of a
    # POST /orders body the file's author never wrote.
    data = csv_file(
        csv_row("ext-1"),
        csv_row("ext-1", "MUG"),
        csv_row("ext-1", "4111 1111 1111 1111"),
        csv_row("ext-2", payment_token="4111-1111-1111-1111", customer_email="4111111111111111@example.com"),
    )

    import_id = split_file(stack, "incoming/orders.csv", data)

    first, second = report(import_id)["errors"]
    assert (first["line"], first["code"]) == (4, "card_data_rejected")
    assert first["message"].endswith("(send a payment token): sku")
    assert (second["line"], second["code"]) == (5, "card_data_rejected")
    assert second["message"].endswith("(send a payment token): customer_email, payment_token")


def test_a_redelivered_event_finds_the_same_import_and_queues_nothing_again(stack: ImportAws):
    from functions.import_splitter.app import lambda_handler

    import_id = split_file(stack, "incoming/orders.csv", csv_file(csv_row("ext-1"), csv_row("ext-2", quantity="x")))
    lambda_handler(stack.s3_event("incoming/orders.csv"), context("ImportSplitterFunction", 900))

    assert len(queued(stack)) == 1
    imported = report(import_id)
    assert (imported["total"], imported["failed"]) == (2, 1)


def test_the_import_id_is_stable_for_bucket_key_and_version(stack: ImportAws):
    import_id = split_file(stack, "incoming/orders.csv", csv_file(csv_row("ext-1")))
    etag = stack.s3.head_object(Bucket=stack.bucket, Key="incoming/orders.csv")["ETag"]

    assert import_id == import_id_for(stack.bucket, "incoming/orders.csv", etag)
    assert split_file(stack, "incoming/again.csv", csv_file(csv_row("ext-1"))) != import_id


def test_the_same_file_put_again_in_the_versioned_bucket_is_a_new_import(stack: ImportAws):
    # The template versions the imports bucket so that a file put again is imported again (its
    # orders found duplicates, or imported now that their skus exist): known by its ETag instead of
    # its version, the same bytes were "already read" and the second upload imported nothing.
    from functions.import_splitter.app import lambda_handler

    stack.s3.put_bucket_versioning(Bucket=stack.bucket, VersioningConfiguration={"Status": "Enabled"})
    data = csv_file(csv_row("ext-1"))
    import_ids = []
    for _ in range(2):
        version = stack.s3.put_object(Bucket=stack.bucket, Key="incoming/orders.csv", Body=data)["VersionId"]
        event = stack.s3_event("incoming/orders.csv")
        event["Records"][0]["s3"]["object"]["versionId"] = version
        lambda_handler(event, context("ImportSplitterFunction", 900))
        import_ids.append(import_id_for(stack.bucket, "incoming/orders.csv", version))

    assert import_ids[0] != import_ids[1]
    assert [report(import_id)["total"] for import_id in import_ids] == [1, 1]
    assert len(queued(stack)) == 2


def test_a_null_version_in_the_event_is_no_version_so_each_upload_is_its_own_import(stack: ImportAws):
    # A bucket whose versioning was suspended stores every upload as version "null", and its events
    # say so: taken for a version, every upload of one key was "already read" (the second file was
    # never imported), under an id other than the one `make import` follows (the ETag's).
    from functions.import_splitter.app import lambda_handler

    import_ids = []
    for external_id in ("ext-1", "ext-2"):
        stack.put_file("incoming/orders.csv", csv_file(csv_row(external_id)))
        event = stack.s3_event("incoming/orders.csv")
        event["Records"][0]["s3"]["object"]["versionId"] = "null"
        lambda_handler(event, context("ImportSplitterFunction", 900))
        etag = stack.s3.head_object(Bucket=stack.bucket, Key="incoming/orders.csv")["ETag"]
        import_ids.append(import_id_for(stack.bucket, "incoming/orders.csv", etag))

    assert import_ids[0] != import_ids[1]
    assert [report(import_id)["total"] for import_id in import_ids] == [1, 1]
    assert len(queued(stack)) == 2


def test_a_key_with_spaces_arrives_url_encoded_and_is_read(stack: ImportAws):
    import_id = split_file(stack, "incoming/march orders.csv", csv_file(csv_row("ext-1")))

    assert report(import_id)["source"].endswith("/incoming/march orders.csv")
    assert len(queued(stack)) == 1


@pytest.mark.parametrize(
    ("key", "data", "code"),
    [
        ("incoming/orders.xlsx", b"PK\x03\x04", "unknown_format"),
        ("incoming/orders", b"just some text\n", "unknown_format"),
        ("incoming/orders.csv", b"order,id\n1,2\n", "invalid_header"),
        ("incoming/orders.csv", b"", "empty_file"),
    ],
)
def test_a_file_of_unknown_format_fails_the_import_with_a_clear_error(stack: ImportAws, key: str, data: bytes, code):
    import_id = split_file(stack, key, data)

    imported = report(import_id)
    assert imported["status"] == "failed"
    assert [(e["line"], e["code"]) for e in imported["errors"]] == [(None, code)]
    assert imported["errors"][0]["message"]
    assert queued(stack) == []


def test_a_file_replaced_before_it_was_read_fails_with_a_clear_error(stack: ImportAws):
    from functions.import_splitter.app import lambda_handler

    import_id = stack.put_file("incoming/orders.csv", csv_file(csv_row("ext-1")))
    event = stack.s3_event("incoming/orders.csv")
    stack.s3.put_object(Bucket=stack.bucket, Key="incoming/orders.csv", Body=csv_file(csv_row("ext-2")))

    lambda_handler(event, context("ImportSplitterFunction", 900))

    imported = report(import_id)
    assert imported["status"] == "failed"
    assert imported["errors"][0]["code"] == "file_unavailable"


def test_an_interrupted_split_is_reported_then_resumed_by_its_retry_without_counting_twice(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch
):
    from functions.import_splitter.app import lambda_handler

    data = csv_file(*(csv_row(f"ext-{i:02d}", quantity="x" if i % 5 == 0 else "1") for i in range(25)))
    import_id = stack.put_file("incoming/orders.csv", data)
    event = stack.s3_event("incoming/orders.csv")
    send = SqsOrderQueue.flush
    calls = {"n": 0}

    def flaky_flush(queue: SqsOrderQueue) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionError("network down")
        send(queue)

    monkeypatch.setattr(SqsOrderQueue, "flush", flaky_flush)
    with pytest.raises(ConnectionError):
        lambda_handler(event, context("ImportSplitterFunction", 900))
    interrupted = report(import_id)
    assert interrupted["status"] == "failed"
    assert interrupted["errors"][0]["code"] == "split_interrupted"

    lambda_handler(event, context("ImportSplitterFunction", 900))  # Lambda's retry of the event

    resumed = report(import_id)
    assert (resumed["status"], resumed["total"], resumed["total_final"], resumed["failed"]) == ("running", 25, True, 5)
    assert [e["code"] for e in resumed["errors"]] == ["invalid_number"] * 5
    # The messages of the first attempt are sent again: the worker records each line once.
    assert len({json.loads(m["Body"])["external_id"] for m in queued(stack)}) == 20


def test_big_orders_go_in_smaller_batches_to_stay_under_the_256_kib_batch_limit(stack: ImportAws):
    big = {
        "channel": "market",
        "currency": "USD",
        "customer": {"id": "c", "email": "a@b.co"},
        "lines": [{"sku": "TSHIRT", "quantity": 1}],
        "shipping_address": {"name": "x" * 200, "line1": "y", "city": "z", "postal_code": "1", "country": "US"},
        "payment": {"method": "test", "token": "t" * 60_000},  # 60 KB: four fit a batch, not five
    }
    lines = [json.dumps({**big, "external_id": f"ext-{i}"}) for i in range(9)]

    split_file(stack, "incoming/big.jsonl", ("\n".join(lines) + "\n").encode())

    assert len(queued(stack)) == 9


def test_an_import_whose_completing_write_failed_is_completed_by_the_retried_event_never_left_failed(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch
):
    from botocore.exceptions import ClientError

    from functions.adapters.imports import DynamoImportLedger
    from functions.import_splitter.app import lambda_handler

    # Every row is bad, so the splitter records them all and its final write completes the import.
    data = csv_file(*(csv_row(f"ext-{i}", quantity="x") for i in range(3)))
    import_id = stack.put_file("incoming/orders.csv", data)
    event = stack.s3_event("incoming/orders.csv")
    complete = DynamoImportLedger._complete_if_done
    calls = {"n": 0}

    def busy_once(ledger: DynamoImportLedger, import_id: str, values: dict[str, Any], at: Any) -> None:
        # The write that completes the import, once the file is read: busy the first time.
        if values.get("total_final") and not calls["n"]:
            calls["n"] += 1
            error = {"Code": "ProvisionedThroughputExceededException", "Message": "busy"}
            raise ClientError({"Error": error}, "UpdateItem")
        complete(ledger, import_id, values, at)

    monkeypatch.setattr(DynamoImportLedger, "_complete_if_done", busy_once)
    with pytest.raises(ClientError):
        lambda_handler(event, context("ImportSplitterFunction", 900))

    lambda_handler(event, context("ImportSplitterFunction", 900))  # Lambda's retry of the event

    done = report(import_id)
    assert (done["status"], done["total"], done["failed"]) == ("completed_with_errors", 3, 3)
    assert [e["code"] for e in done["errors"]] == ["invalid_number"] * 3  # no split_interrupted


def test_a_delivery_interrupted_while_a_duplicate_delivery_reads_the_file_whole_leaves_the_import_running(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch
):
    # S3 may deliver one event twice, at once: one delivery failing must not fail the import the
    # other one reads whole (its retry then finds the file read, and nothing would complete it).
    from core.import_service import ImportSource
    from functions.import_splitter.app import container, lambda_handler
    from functions.import_splitter.readers import read_orders

    data = csv_file(*(csv_row(f"ext-{i}", quantity="x" if i % 2 else "1") for i in range(6)))
    import_id = stack.put_file("incoming/orders.csv", data)
    event = stack.s3_event("incoming/orders.csv")
    send = SqsOrderQueue.flush
    interrupted = {"done": False}

    def failing_flush(queue: SqsOrderQueue) -> None:
        if not interrupted["done"]:
            raise ConnectionError("network down")
        send(queue)

    def other_delivery_fails_meanwhile():
        monkeypatch.setattr(SqsOrderQueue, "flush", failing_flush)
        with pytest.raises(ConnectionError):
            lambda_handler(event, context("ImportSplitterFunction", 900))
        interrupted["done"] = True
        yield data

    splitter, _ = container().import_splitter()
    source = ImportSource(import_id=import_id, uri=f"s3://{stack.bucket}/incoming/orders.csv")
    assert splitter.split(source, lambda: read_orders(other_delivery_fails_meanwhile(), "orders.csv"))
    lambda_handler(event, context("ImportSplitterFunction", 900))  # Lambda's retry of the failed delivery

    read_whole = report(import_id)
    assert (read_whole["status"], read_whole["total"], read_whole["total_final"]) == ("running", 6, True)
    assert "split_interrupted" not in [e["code"] for e in read_whole["errors"]]


def test_a_delivery_interrupted_after_a_duplicate_delivery_failed_the_file_leaves_the_file_error(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch
):
    # The duplicate delivery ended the import (its file cannot be imported, import.completed sent);
    # this one's interruption then overwrote that end with split_interrupted, and its retry read
    # the file again to fail it a second time.
    from core.import_service import ImportSource
    from functions.import_splitter.app import container, lambda_handler

    import_id = stack.put_file("incoming/orders.csv", b"order,id\n1,2\n")
    event = stack.s3_event("incoming/orders.csv")

    def duplicate_delivery_fails_the_file_meanwhile():
        lambda_handler(event, context("ImportSplitterFunction", 900))
        raise ConnectionError("reset")

    splitter, _ = container().import_splitter()
    source = ImportSource(import_id=import_id, uri=f"s3://{stack.bucket}/incoming/orders.csv")
    with pytest.raises(ConnectionError):
        splitter.split(source, duplicate_delivery_fails_the_file_meanwhile)

    ended = report(import_id)
    assert ended["status"] == "failed"
    assert [(e["line"], e["code"]) for e in ended["errors"]] == [(None, "invalid_header")]
    assert not splitter.split(source, duplicate_delivery_fails_the_file_meanwhile)  # Lambda's retry: nothing to do


def test_a_retry_that_finds_its_import_resumed_by_a_duplicate_delivery_meanwhile_leaves_it_alone(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch
):
    # The retry read the import failed (interrupted), then a duplicate delivery of the event read
    # the file whole; the retry's restart, unconditional, set the import running again whatever it
    # was by then (a completed import went back to running) and queued every order a second time.
    from functions.adapters.imports import DynamoImportLedger
    from functions.import_splitter.app import lambda_handler

    data = csv_file(*(csv_row(f"ext-{i}") for i in range(4)))
    import_id = stack.put_file("incoming/orders.csv", data)
    event = stack.s3_event("incoming/orders.csv")
    send = SqsOrderQueue.flush
    calls = {"flush": 0, "restart": 0}

    def flush_failing_once(queue: SqsOrderQueue) -> None:
        calls["flush"] += 1
        if calls["flush"] == 1:
            raise ConnectionError("network down")
        send(queue)

    restart = DynamoImportLedger.restart

    def duplicate_delivery_first(ledger: DynamoImportLedger, *args: Any) -> Any:
        calls["restart"] += 1
        if calls["restart"] == 1:
            lambda_handler(event, context("ImportSplitterFunction", 900))  # reads the file whole
        return restart(ledger, *args)

    monkeypatch.setattr(SqsOrderQueue, "flush", flush_failing_once)
    with pytest.raises(ConnectionError):
        lambda_handler(event, context("ImportSplitterFunction", 900))
    monkeypatch.setattr(DynamoImportLedger, "restart", duplicate_delivery_first)

    lambda_handler(event, context("ImportSplitterFunction", 900))  # Lambda's retry of the event

    assert sorted(json.loads(m["Body"])["external_id"] for m in queued(stack)) == [f"ext-{i}" for i in range(4)]
    read_whole = report(import_id)
    assert (read_whole["status"], read_whole["total"], read_whole["total_final"]) == ("running", 4, True)


def test_a_bad_rows_error_refused_after_its_count_is_kept_by_the_retried_event(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch
):
    # The splitter counted the bad row, then DynamoDB refused the write of its error: the retried
    # event found the row recorded and went on, so the report said failed: 1 and listed nothing.
    from botocore.exceptions import ClientError

    from functions.import_splitter.app import container, lambda_handler

    data = csv_file(csv_row("ext-1"), csv_row("ext-2", quantity="x"))
    import_id = stack.put_file("incoming/orders.csv", data)
    event = stack.s3_event("incoming/orders.csv")
    refused = refuse_puts(container().import_ledger, monkeypatch, error_pk)
    with pytest.raises(ClientError):
        lambda_handler(event, context("ImportSplitterFunction", 900))

    lambda_handler(event, context("ImportSplitterFunction", 900))  # Lambda's retry of the event

    assert refused == [f"IMPORT#{import_id}#ERRORS"]
    resumed = report(import_id)
    assert (resumed["status"], resumed["total"], resumed["failed"]) == ("running", 2, 1)
    assert [(e["line"], e["code"]) for e in resumed["errors"]] == [(3, "invalid_number")]


def test_a_bad_rows_error_refused_with_its_fallback_after_its_count_is_kept_by_the_retried_event(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch
):
    # DynamoDB refused the error's write and then its fallback onto the row's marker: the retried
    # event found the row recorded with nothing on its marker to write.
    from botocore.exceptions import ClientError

    from functions.import_splitter.app import container, lambda_handler

    import_id = stack.put_file("incoming/orders.csv", csv_file(csv_row("ext-1"), csv_row("ext-2", quantity="x")))
    event = stack.s3_event("incoming/orders.csv")
    refused = refuse_an_error_and_its_fallback(container().import_ledger, monkeypatch)
    with pytest.raises(ClientError):
        lambda_handler(event, context("ImportSplitterFunction", 900))

    lambda_handler(event, context("ImportSplitterFunction", 900))  # Lambda's retry of the event
    lambda_handler(event, context("ImportSplitterFunction", 900))  # and a duplicate delivery of it

    assert refused == ["error", "fallback"]
    resumed = report(import_id)
    assert (resumed["status"], resumed["total"], resumed["failed"]) == ("running", 2, 1)
    assert [(e["line"], e["code"]) for e in resumed["errors"]] == [(3, "invalid_number")]


@pytest.mark.parametrize("fallback_refused", [True, False], ids=["on-nothing", "on-its-marker"])
def test_a_bad_rows_error_lost_after_a_duplicate_delivery_read_the_file_whole_is_kept_by_the_retried_event(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch, fallback_refused: bool
):
    # A duplicate delivery found the bad row marked before this delivery counted it (so its keep
    # step found no error missing) and read the file whole; this delivery then counted the row,
    # and DynamoDB refused its error (and, `fallback_refused`, the fallback onto its marker). Its
    # retry stopped at begin() (the total was final) and nothing else would ever write that error.
    from botocore.exceptions import ClientError

    from functions.import_splitter.app import container, lambda_handler

    import_id = stack.put_file("incoming/orders.csv", csv_file(csv_row("ext-1"), csv_row("ext-2", quantity="x")))
    event = stack.s3_event("incoming/orders.csv")
    ledger = container().import_ledger
    duplicate: list[str] = []

    def duplicate_before_the_count(request: dict[str, Any]) -> None:
        if request.get("ExpressionAttributeNames", {}).get("#counter") == "failed" and not duplicate:
            duplicate.append("ran")
            lambda_handler(event, context("ImportSplitterFunction", 900))  # finds line 3 marked, not counted
            read_whole = report(import_id)
            assert (read_whole["total_final"], read_whole["failed"], read_whole["errors"]) == (True, 0, [])

    before_updates(ledger, monkeypatch, duplicate_before_the_count)
    if fallback_refused:
        refused = refuse_an_error_and_its_fallback(ledger, monkeypatch)
    else:
        refused = refuse_puts(ledger, monkeypatch, lambda item: "error" if error_pk(item) else None)
    with pytest.raises(ClientError):
        lambda_handler(event, context("ImportSplitterFunction", 900))
    assert (duplicate, refused) == (["ran"], ["error", "fallback"] if fallback_refused else ["error"])
    lost = report(import_id)
    assert (lost["total_final"], lost["failed"], lost["errors"]) == (True, 1, [])

    reads = count_reads(ledger)

    lambda_handler(event, context("ImportSplitterFunction", 900))  # Lambda's retry of the event

    kept = report(import_id)
    assert (kept["status"], kept["total"], kept["failed"]) == ("running", 2, 1)
    assert [(e["line"], e["code"]) for e in kept["errors"]] == [(3, "invalid_number")]
    assert [json.loads(m["Body"])["external_id"] for m in queued(stack)] == ["ext-1"]  # the duplicate's; no more
    # begin()'s read of the import and its errors (short), then keep_lost_errors' (and the marker
    # when the report is still short: the refused put of a marker holding the error returned it).
    assert reads == {"import": 2, "marker": 1 if fallback_refused else 0, "query": 2}
    reads.update(dict.fromkeys(reads, 0))
    lambda_handler(event, context("ImportSplitterFunction", 900))  # a duplicate delivery: nothing more
    assert report(import_id)["errors"] == kept["errors"]
    # begin()'s: the report is whole (its errors' query, unless this instance has them all read).
    assert reads == {"import": 1, "marker": 0, "query": 1 if fallback_refused else 0}


def test_a_folder_made_in_the_s3_console_is_no_import(stack: ImportAws):
    # The console's "Create folder" puts an empty object named "incoming/": S3 announces it like
    # any upload, and it was listed as a failed import ("cannot tell the format of incoming/").
    from functions.api.dependencies import container

    split_file(stack, "incoming/", b"")
    split_file(stack, "incoming/march/", b"")

    assert container().import_queries.list(25, None) == ([], None)


def test_a_running_total_is_never_lowered_by_a_duplicate_continuation_handing_off_behind_it(stack: ImportAws):
    # Two deliveries of one continuation read the same file: the one behind hands off at fewer
    # orders and wrote its lower total over the other's, so a client following the import saw the
    # orders found go down.
    from core.models import utc_now
    from functions.adapters.imports import _import_key
    from functions.import_splitter.app import container

    ledger = container().import_ledger
    ledger.begin("imp_twice", "s3://b/k", utc_now())
    ledger.progress("imp_twice", "csv", 2000, utc_now())
    ledger.progress("imp_twice", "csv", 1000, utc_now())

    item = ledger._client.get_item(TableName=ledger._table, Key=_import_key("imp_twice"))["Item"]
    assert item["total"]["N"] == "2000"
    ledger.progress("imp_twice", "csv", 3000, utc_now())
    assert report("imp_twice")["total"] == 3000


# The file split_interrupted_at_its_end imports: its orders, and the bad rows among them.
ORDERS = 20
BAD = 6


def split_interrupted_at_its_end(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch, *, lose_last_error: bool
) -> tuple[str, dict[str, Any], list[int]]:
    """A file of ORDERS orders, BAD of them bad rows (3 in each 10), whose first split recorded every
    bad row and was interrupted at its end: by its last write, or (`lose_last_error`) by DynamoDB
    refusing the last bad row's error and that error's fallback onto the row's marker. The import
    id, the file's event and the bad rows' lines; a split writes its progress every 10 orders (two
    progress writes, as 200 orders at every 100 were, at a tenth of the orders and writes)."""
    from botocore.exceptions import ClientError

    from functions.import_splitter.app import container, lambda_handler

    monkeypatch.setattr("core.import_service.PROGRESS_EVERY", ORDERS // 2)
    rows = [csv_row(f"ext-{i:03d}", quantity="x" if i % 10 < 3 else "1") for i in range(ORDERS)]
    bad_lines = [i + 2 for i in range(ORDERS) if i % 10 < 3]
    import_id = stack.put_file("incoming/orders.csv", csv_file(*rows))
    event = stack.s3_event("incoming/orders.csv")
    ledger = container().import_ledger
    if lose_last_error:
        last = str(bad_lines[-1])

        def last_error_and_its_fallback(item: dict[str, Any]) -> str | None:
            if error_pk(item) and item["line"]["N"] == last:
                return "error"
            return "fallback" if "unkept_error" in item else None

        refused = refuse_puts(ledger, monkeypatch, last_error_and_its_fallback)
    else:
        finish_reading, refused = ledger.finish_reading, []

        def dies_once(*args: Any, **kwargs: Any) -> None:
            if not refused:
                refused.append("finish_reading")
                raise ConnectionError("network down")
            finish_reading(*args, **kwargs)

        monkeypatch.setattr(ledger, "finish_reading", dies_once)
    with pytest.raises((ClientError, ConnectionError)):
        lambda_handler(event, context("ImportSplitterFunction", 900))
    assert refused == (["error", "fallback"] if lose_last_error else ["finish_reading"])
    interrupted = report(import_id)
    assert interrupted["failed"] == BAD
    assert len([e for e in interrupted["errors"] if e["line"]]) == (BAD - 1 if lose_last_error else BAD)
    return import_id, event, bad_lines


def count_reads(ledger: Any) -> dict[str, int]:
    """The reads the ledger's DynamoDB client makes from now on: GetItem of the import's item and
    of line markers, and Query."""
    reads = {"import": 0, "marker": 0, "query": 0}

    def counting(params: dict[str, Any], model: Any, **_: Any) -> None:
        if model.name == "GetItem":
            reads["import" if params["Key"].get("sk", {}).get("S") == "IMPORT" else "marker"] += 1
        elif model.name == "Query":
            reads["query"] += 1

    ledger._client.meta.events.register("before-parameter-build.dynamodb", counting)
    return reads


@pytest.mark.parametrize("lose_last_error", [False, True], ids=["errors-kept", "last-error-lost"])
def test_a_retried_split_reads_its_import_once_per_progress_not_once_per_bad_row_found_recorded(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch, lose_last_error: bool
):
    # The retry finds each bad row recorded, and read the import's item, the row's marker and
    # (with an error missing) the import's errors once for each: BAD of each here, 10,000 for a
    # file of 100,000 orders with 10,000 bad rows.
    from functions.import_splitter.app import container, lambda_handler

    import_id, event, bad_lines = split_interrupted_at_its_end(stack, monkeypatch, lose_last_error=lose_last_error)
    reads = count_reads(container().import_ledger)

    lambda_handler(event, context("ImportSplitterFunction", 900))  # Lambda's retry of the event

    resumed = report(import_id)
    assert (resumed["status"], resumed["total"], resumed["total_final"], resumed["failed"]) == (
        "running",
        ORDERS,
        True,
        BAD,
    )
    assert [(e["line"], e["code"]) for e in resumed["errors"]] == [(n, "invalid_number") for n in bad_lines]
    # begin()'s read, then one for each progress's bad rows; their markers only while the report
    # is short of an error (the last row's: every marker is read up to it).
    assert (reads["import"], reads["marker"]) == (3, BAD if lose_last_error else 0)
    assert reads["query"] <= 2
    lambda_handler(event, context("ImportSplitterFunction", 900))  # a duplicate delivery: nothing more
    assert report(import_id)["errors"] == resumed["errors"]


def test_bad_rows_a_retried_split_found_recorded_and_died_before_handing_over_are_found_by_its_next_retry(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch
):
    # The rows a split finds recorded wait in memory until its next progress write: a split that
    # dies before handing them to keep_lost_errors must not leave their lost errors for good.
    from functions.import_splitter.app import container, lambda_handler

    import_id, event, bad_lines = split_interrupted_at_its_end(stack, monkeypatch, lose_last_error=True)
    ledger = container().import_ledger
    keep_lost_errors, died = ledger.keep_lost_errors, []

    def dies_handing_over_the_last(import_id: str, lines: list[int]) -> None:
        if bad_lines[-1] in lines and not died:
            died.append(lines[:])
            raise ConnectionError("network down")
        keep_lost_errors(import_id, lines)

    monkeypatch.setattr(ledger, "keep_lost_errors", dies_handing_over_the_last)
    with pytest.raises(ConnectionError):
        lambda_handler(event, context("ImportSplitterFunction", 900))  # Lambda's retry, killed
    assert died == [bad_lines[BAD // 2 :]]  # the second progress's bad rows, the lost one among them
    interrupted = report(import_id)
    assert interrupted["status"] == "failed"
    assert [e["code"] for e in interrupted["errors"] if e["line"] is None] == ["split_interrupted"]
    assert len([e for e in interrupted["errors"] if e["line"]]) == BAD - 1

    lambda_handler(event, context("ImportSplitterFunction", 900))  # and its next retry

    resumed = report(import_id)
    assert (resumed["status"], resumed["total_final"], resumed["failed"]) == ("running", True, BAD)
    assert [(e["line"], e["code"]) for e in resumed["errors"]] == [(n, "invalid_number") for n in bad_lines]


def test_a_file_read_again_for_a_lost_error_is_handed_on_when_time_runs_short_and_keeps_it_once(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch
):
    # The retried event of a split that lost a bad row's error after a duplicate delivery read the
    # file whole reads the file again for its bad rows, one record() each: it ran to the end
    # whatever the time left, and a file of 100,000 bad rows outlasted the invocation (retried,
    # it started again from the first row). Out of time at every order here (the reserve above
    # the 15 minutes), it hands the rest on as a split does, each continuation one order on.
    from botocore.exceptions import ClientError

    from functions.import_splitter import app
    from functions.import_splitter.app import container, lambda_handler

    rows = [csv_row("ext-1"), csv_row("ext-2", quantity="x"), csv_row("ext-3"), csv_row("ext-4", quantity="x")]
    import_id = stack.put_file("incoming/orders.csv", csv_file(*rows))
    event = stack.s3_event("incoming/orders.csv")
    ledger = container().import_ledger
    counted: list[str] = []

    def duplicate_before_the_second_count(request: dict[str, Any]) -> None:
        if request.get("ExpressionAttributeNames", {}).get("#counter") == "failed":
            counted.append("failed")
            if len(counted) == 2:  # line 5's: marked, not counted; the duplicate reads the file whole
                lambda_handler(event, context("ImportSplitterFunction", 900))

    before_updates(ledger, monkeypatch, duplicate_before_the_second_count)
    refused = refuse_puts(
        ledger,
        monkeypatch,
        lambda item: (
            "error" if error_pk(item) and item["line"]["N"] == "5" else "fallback" if "unkept_error" in item else None
        ),
    )
    with pytest.raises(ClientError):
        lambda_handler(event, context("ImportSplitterFunction", 900))
    assert refused == ["error", "fallback"]
    lost = report(import_id)
    assert (lost["total_final"], lost["failed"], [e["line"] for e in lost["errors"]]) == (True, 2, [3])

    handed_on: list[dict[str, Any]] = []

    class AsyncInvokes:
        """Lambda's queue of asynchronous invocations, delivered by the loop below."""

        def invoke(self, FunctionName: str, InvocationType: str, Payload: str) -> None:
            assert InvocationType == "Event"
            handed_on.append(json.loads(Payload))

    monkeypatch.setattr(container(), "lambda_", AsyncInvokes())
    monkeypatch.setattr(app, "HAND_OFF_RESERVE_MILLIS", 10**9)
    errors_written: list[str] = []
    before_puts(ledger, monkeypatch, lambda item: errors_written.append(item["sk"]["S"]) if error_pk(item) else None)
    lambda_handler(event, context("ImportSplitterFunction", 900))  # Lambda's retry of the event
    for continuation in handed_on:  # each as Lambda delivers it (those it hands on join the list)
        lambda_handler(continuation, context("ImportSplitterFunction", 900))

    assert [payload["continue_after_orders"] for payload in handed_on] == [1, 2, 3]  # then none missing
    assert all(payload["Records"] == event["Records"] for payload in handed_on)
    assert errors_written == ["line#5"]  # found recorded by the last continuation, written once
    kept = report(import_id)
    assert (kept["status"], kept["total"], kept["total_final"], kept["failed"]) == ("running", 4, True, 2)
    assert [(e["line"], e["code"]) for e in kept["errors"]] == [(3, "invalid_number"), (5, "invalid_number")]
    assert sorted(json.loads(m["Body"])["external_id"] for m in queued(stack)) == ["ext-1", "ext-3"]  # the duplicate's


def count_throttled_after_a_duplicate_read_the_file_whole(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch, note_refused: bool = False
) -> tuple[str, dict[str, Any]]:
    """A delivery of a file's event marks line 3 (a bad row), a duplicate delivery finds it marked
    and reads the file whole, then DynamoDB throttles the first delivery's count (and, with
    `note_refused`, its note `reread` for its event's retry), which raises. The import and event."""
    from botocore.exceptions import ClientError

    from functions.import_splitter.app import container, lambda_handler
    from tests.integration.import_support import seed_catalog

    seed_catalog()
    import_id = stack.put_file("incoming/orders.csv", csv_file(csv_row("ext-1"), csv_row("ext-2", quantity="x")))
    event = stack.s3_event("incoming/orders.csv")
    throttled: list[str] = []

    def duplicate_then_throttled(request: dict[str, Any]) -> None:
        if request.get("ExpressionAttributeNames", {}).get("#counter") == "failed" and not throttled:
            throttled.append("count")
            lambda_handler(event, context("ImportSplitterFunction", 900))  # finds line 3 marked; reads it all
            raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "UpdateItem")
        if note_refused and "reread" in request["UpdateExpression"] and throttled == ["count"]:
            throttled.append("reread")
            raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "UpdateItem")

    before_updates(container().import_ledger, monkeypatch, duplicate_then_throttled)
    with pytest.raises(ClientError):
        lambda_handler(event, context("ImportSplitterFunction", 900))
    assert throttled == (["count", "reread"] if note_refused else ["count"])
    assert (report(import_id)["total_final"], report(import_id)["failed"]) == (True, 0)
    return import_id, event


def test_a_bad_rows_count_throttled_after_a_duplicate_delivery_read_the_file_whole_is_counted_by_the_retried_event(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch
):
    # The count's marker is flagged uncounted for the line's redelivery to count, and a split's is
    # its event's retry, which stopped at begin() (the total final, the report short of no error it
    # counted). The recount waits on an uncounted marker, and the import stayed running, one
    # short, for good.
    from functions.import_splitter.app import lambda_handler
    from tests.integration.import_support import worker

    import_id, event = count_throttled_after_a_duplicate_read_the_file_whole(stack, monkeypatch)
    lambda_handler(event, context("ImportSplitterFunction", 900))  # Lambda's retry of the event
    stack.drain(worker)

    done = report(import_id)
    assert (done["status"], done["total"], done["imported"], done["failed"]) == ("completed_with_errors", 2, 1, 1)
    assert [(e["line"], e["code"]) for e in done["errors"]] == [(3, "invalid_number")]
    lambda_handler(event, context("ImportSplitterFunction", 900))  # a duplicate delivery: nothing more
    assert report(import_id) == done


def test_a_bad_rows_count_throttled_with_the_note_for_the_retried_event_is_counted_by_the_recount(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch
):
    # As above, and DynamoDB throttled the note `reread` too (the import's item, which every count
    # adds to): the retried event found the file read whole and no note, and read nothing; the
    # recount waits on the uncounted marker (a redelivery under way), so the import stayed
    # running, one short, for good.
    from datetime import timedelta

    from core.import_recount import StuckImportRecount
    from core.models import utc_now
    from functions.import_splitter.app import container, lambda_handler
    from tests.integration.import_support import worker

    import_id, event = count_throttled_after_a_duplicate_read_the_file_whole(stack, monkeypatch, note_refused=True)
    lambda_handler(event, context("ImportSplitterFunction", 900))  # Lambda's retry of the event: no note
    stack.drain(worker)
    short = report(import_id)
    assert (short["status"], short["total"], short["imported"], short["failed"]) == ("running", 2, 1, 0)

    later = utc_now() + timedelta(minutes=31)
    assert StuckImportRecount(container().import_ledger, lambda: later).run().completed == [import_id]

    done = report(import_id)
    assert (done["status"], done["total"], done["imported"], done["failed"]) == ("completed_with_errors", 2, 1, 1)
    assert [(e["line"], e["code"]) for e in done["errors"]] == [(3, "invalid_number")]
    lambda_handler(event, context("ImportSplitterFunction", 900))  # a duplicate delivery: nothing more
    assert report(import_id) == done


@pytest.mark.parametrize(
    ("name", "data", "line"),
    [
        # 480,000 bytes of external_id in a 120,000-character CSV cell (four bytes a character).
        ("long-id.csv", csv_file(csv_row("\U0001f600" * 120_000), csv_row("ext-after")), 2),
        # An order over 250 KiB, all of it its external_id.
        (
            "long-id.jsonl",
            (
                json.dumps({"channel": "web", "external_id": "x" * 450_000})
                + "\n"
                + json.dumps({"channel": "web", "external_id": "ext-after"})
                + "\n"
            ).encode(),
            1,
        ),
    ],
)
def test_a_row_whose_external_id_is_too_long_to_store_fails_on_its_line_and_the_file_goes_on(
    stack: ImportAws, name: str, data: bytes, line: int
):
    # Its error was kept with the whole external_id: over DynamoDB's 400 KB item, the write raised,
    # and every retry of the file's event stopped on the same row (split_interrupted, for good).
    import_id = split_file(stack, f"incoming/{name}", data)

    imported = report(import_id)
    assert (imported["status"], imported["total"], imported["failed"]) == ("running", 2, 1)
    [error] = imported["errors"]
    assert (error["line"], error["code"]) == (line, "order_too_large")
    assert len(error["external_id"]) <= 128 and error["external_id"].endswith("…")
    assert [json.loads(message["Body"])["external_id"] for message in queued(stack)] == ["ext-after"]


def test_a_header_naming_a_column_too_long_to_store_fails_the_import_saying_so(stack: ImportAws):
    # The file's error named the unknown column whole: 480,000 bytes over DynamoDB's 400 KB item, so
    # the import's failure could not be written, and it showed split_interrupted, retried for good.
    header = ",".join(["channel", "external_id", "\U0001f600" * 120_000])
    import_id = split_file(stack, "incoming/long-header.csv", f"{header}\n{csv_row('ext-1')}\n".encode())

    ended = report(import_id)
    assert ended["status"] == "failed"
    [error] = ended["errors"]
    assert (error["line"], error["code"]) == (None, "invalid_header")
    assert len(error["message"]) <= 500 and error["message"].endswith("…")


def test_a_finished_import_is_never_written_back_to_running_or_failed(stack: ImportAws):
    # Every status write of the ledger is conditional on the statuses core.status's import table
    # lets reach its target: a completed import is neither failed by a late interruption nor
    # resumed by a retried event, and its report stays as it ended.
    from core.import_service import SPLIT_INTERRUPTED
    from core.models import utc_now
    from functions.import_splitter.app import container

    import_id = split_file(stack, "incoming/bad.csv", csv_file(csv_row("ext-1", quantity="x")))
    ended = report(import_id)
    assert ended["status"] == "completed_with_errors"
    ledger = container().import_ledger

    ledger.fail(import_id, SPLIT_INTERRUPTED, "interrupted", utc_now())
    assert not ledger.restart(import_id, utc_now())

    assert report(import_id) == ended
