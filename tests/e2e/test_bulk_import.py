"""Bulk import end to end on the local stack: a file put under incoming/ goes through the S3
notification, the splitter, the import queue and the worker (the event source mappings the
template declares), and GET /imports reports it; `make import` does the same from a terminal; a
webhook subscribed to `import.completed` receives the import's end."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from core.imports import import_id_for
from core.webhooks import verify_signature
from functions.import_splitter.readers import COLUMNS
from infra.local.stack import EmbeddedStack, running_stack
from tests.e2e.client import Api, assert_error, unique
from tests.e2e.conftest import PARAMETERS

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_CSV = ROOT / "events" / "orders-sample.csv"
SAMPLE_JSONL = ROOT / "events" / "orders-sample.jsonl"
FINISHED = ("completed", "completed_with_errors", "failed")


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    """The demo catalog (the sample files order its skus), and only the import's event sources
    running (with import.completed's and the webhook deliveries'): the order workflow is not what
    this module is about, orders stay as placed."""
    with running_stack(seed=True, event_sources=False, parameter_overrides=PARAMETERS) as started:
        started.seed_demo_data()
        for mapping in started.mappings.values():
            if mapping.function_logical_id in ("ImportSplitterFunction", "ImportWorkerFunction") or mapping.name in (
                "EventsFunction.ImportsStream",
                "WebhookDeliveryFunction.DeliveryQueue",
            ):
                mapping.resume()
        yield started


@pytest.fixture(scope="module")
def api(stack: EmbeddedStack) -> Iterator[Api]:
    client = Api(stack.api_url, stack.admin_key)
    yield client
    client.close()


def csv_row(channel: str, external_id: str, sku: str = "STICKER-PACK", quantity: str = "1") -> str:
    values = dict.fromkeys(COLUMNS, "")
    values.update(
        channel=channel,
        external_id=external_id,
        currency="USD",
        customer_id="cus-import",
        customer_email="grace@example.com",
        sku=sku,
        quantity=quantity,
        ship_name="Grace Hopper",
        ship_line1="1 Navy Yard Pl",
        ship_city="Arlington",
        ship_region="VA",
        ship_postal_code="22202",
        ship_country="US",
        payment_method="test",
        payment_token="tok_approve",
    )
    return ",".join(values[column] for column in COLUMNS)


def put_file(stack: EmbeddedStack, key: str, data: bytes) -> str:
    s3 = stack.client("s3")
    bucket = stack.bucket_names["ImportsBucket"]
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    return import_id_for(bucket, key, s3.head_object(Bucket=bucket, Key=key)["ETag"])


def finished(api: Api, import_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = api.get(f"/imports/{import_id}")
        if response.status_code == 200 and response.json()["status"] in FINISHED:
            return response.json()
        assert response.status_code in (200, 404), response.text
        time.sleep(0.1)
    raise AssertionError(f"import {import_id} did not finish in {timeout} s: {api.get(f'/imports/{import_id}').text}")


def orders_csv(*rows: str) -> bytes:
    return ("\n".join([",".join(COLUMNS), *rows]) + "\n").encode()


def assert_granted(calls: dict[str, set[Any]], function: str) -> None:
    from tests.template_iam import granted

    needed = calls[function]
    assert needed <= granted(function), f"{function} calls what it is not granted: {needed - granted(function)}"


def test_a_file_put_under_incoming_is_imported_once_reported_and_listed_to_keys_that_may_read_imports(
    stack: EmbeddedStack, api: Api
):
    """The file's orders placed (a bad row refused with its line, beside the rest), the same file
    again a duplicate of each, a file of unknown format failed: each import reported and listed
    newest first, to keys with orders:read not bound to a channel; every call the splitter and the
    worker make on the way, the worker's reading of duplicates among them, is granted by the
    template (issue 10 item 5: on AWS a duplicate was AccessDenied and its import never ended)."""
    from tests.template_iam import calls_by_function

    channel = unique("mkt")
    orders_file = orders_csv(
        csv_row(channel, "A-1", "TSHIRT-BLK-M", "1"),
        csv_row(channel, "A-1", "STICKER-PACK", "2"),
        csv_row(channel, "A-2"),
        csv_row(channel, "A-3", "NOT-A-SKU"),
        csv_row(channel, "A-4", "MUG-001", "1"),
        csv_row(channel, "A-5", quantity="x"),
    )

    with calls_by_function(stack) as calls:
        first_import = finished(api, put_file(stack, "incoming/first.csv", orders_file))
        assert stack.wait_until_idle(10)

    assert {k: first_import[k] for k in ("status", "format", "total", "imported", "duplicates", "failed")} == {
        "status": "completed_with_errors",
        "format": "csv",
        "total": 5,
        "imported": 3,
        "duplicates": 0,
        "failed": 2,
    }
    assert first_import["errors"][0] == (
        {"line": 5, "external_id": "A-3", "code": "unknown_sku", "message": "unknown sku: sku: no product NOT-A-SKU"}
    )
    assert [(e["line"], e["external_id"], e["code"]) for e in first_import["errors"][1:]] == [
        (7, "A-5", "invalid_number")
    ]
    assert first_import["source"].endswith("/incoming/first.csv")
    assert {"ImportSplitterFunction", "ImportWorkerFunction"} <= set(calls), sorted(calls)
    for function in calls:
        assert_granted(calls, function)
    listed = api.list_all({"channel": channel})
    assert sorted(order["external_id"] for order in listed) == ["A-1", "A-2", "A-4"]
    (two_lines,) = [order for order in listed if order["external_id"] == "A-1"]
    lines = [(line["sku"], line["quantity"]) for line in two_lines["lines"]]
    assert lines == [("TSHIRT-BLK-M", 1), ("STICKER-PACK", 2)]

    # The same file again, under another key: nothing new, each order a duplicate.
    with calls_by_function(stack) as calls:
        again = finished(api, put_file(stack, "incoming/again/first.csv", orders_file))
        assert stack.wait_until_idle(10)

    assert (again["status"], again["total"], again["imported"], again["duplicates"], again["failed"]) == (
        "completed_with_errors",
        5,
        0,
        3,
        2,
    )
    assert api.list_all({"channel": channel}) == listed
    assert_granted(calls, "ImportWorkerFunction")

    # A file of unknown format: its import fails, saying why; it is the newest listed.
    newest = finished(api, put_file(stack, "incoming/orders.xlsx", b"PK\x03\x04 not a sheet"))

    assert newest["status"] == "failed"
    assert [(e["line"], e["code"]) for e in newest["errors"]] == [(None, "unknown_format")]
    assert ".xlsx" in newest["errors"][0]["message"]
    page = api.get("/imports", params={"limit": 1}).json()
    assert [item["id"] for item in page["items"]] == [newest["id"]]
    assert "errors" not in page["items"][0]
    seen, cursor = [newest["id"]], page["next_cursor"]
    while cursor:
        page = api.get("/imports", params={"limit": 1, "cursor": cursor}).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
    assert first_import["id"] in seen and again["id"] in seen and len(seen) == len(set(seen))
    assert_error(api.get("/imports", params={"cursor": "bm90LWEtY3Vyc29y"}), 422, "invalid_cursor")

    # Imports need orders:read, and a key bound to a channel sees none.
    writer = api.post("/api-keys", json={"name": "writer", "scopes": ["orders:write"]}).json()["key"]
    storefront = api.post(
        "/api-keys", json={"name": "shop", "scopes": ["orders:read"], "channel": unique("shop")}
    ).json()["key"]

    assert_error(api.get("/imports", key=writer), 403, "forbidden")
    assert_error(api.get(f"/imports/{first_import['id']}", key=writer), 403, "forbidden")
    assert api.get("/imports", key=storefront).json() == {"items": [], "next_cursor": None}
    assert_error(api.get(f"/imports/{first_import['id']}", key=storefront), 404, "not_found")
    assert_error(api.get("/imports/imp_nope"), 404, "not_found")  # names nothing, malformed or not


def test_a_file_the_splitter_keeps_failing_on_is_held_for_an_operator_and_resumes_when_replayed(
    stack: EmbeddedStack, api: Api, monkeypatch: pytest.MonkeyPatch
):
    """The template's EventInvokeConfig, as the README's runbook uses it: three failed attempts put
    the S3 event in ImportSplitFailureQueue; invoking the splitter with its requestPayload resumes."""
    from functions.adapters.imports import S3ImportFiles

    real_open = S3ImportFiles.open

    def unreadable(self: S3ImportFiles, bucket: str, key: str, *args: Any) -> Any:
        if key.endswith("unlucky.csv"):
            raise ConnectionError("S3 reset the connection")
        return real_open(self, bucket, key, *args)

    monkeypatch.setattr(S3ImportFiles, "open", unreadable)
    channel = unique("mkt")
    data = orders_csv(csv_row(channel, "U-1"), csv_row(channel, "U-2"))
    import_id = put_file(stack, "incoming/unlucky.csv", data)
    assert stack.wait_until_idle(30)

    report = api.get(f"/imports/{import_id}").json()
    assert report["status"] == "failed"
    assert [e["code"] for e in report["errors"]] == ["split_interrupted"]
    assert "ConnectionError" in report["errors"][0]["message"]
    sqs = stack.client("sqs")
    queue_url = stack.queue_urls["ImportSplitFailureQueue"]
    (message,) = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
    record = json.loads(message["Body"])
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 3
    assert record["responsePayload"]["errorType"] == "ConnectionError"
    assert record["requestPayload"]["Records"][0]["s3"]["object"]["key"] == "incoming/unlucky.csv"

    monkeypatch.undo()  # the cause is fixed; replay the event as the runbook says
    replay = stack.client("lambda").invoke(
        FunctionName=stack.functions["ImportSplitterFunction"].name, Payload=json.dumps(record["requestPayload"])
    )
    assert "FunctionError" not in replay, replay["Payload"].read()
    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])

    resumed = finished(api, import_id)
    assert (resumed["status"], resumed["total"], resumed["imported"], resumed["errors"]) == ("completed", 2, 2, [])
    imported = [order["external_id"] for order in api.list_all({"channel": channel})]
    assert sorted(e for e in imported if e.startswith("U-")) == ["U-1", "U-2"]


def test_a_file_outside_incoming_is_not_imported_and_a_webhook_receives_the_end_of_one_under_it(
    stack: EmbeddedStack, api: Api
):
    outside = put_file(stack, "archive/orders.csv", SAMPLE_CSV.read_bytes())

    assert stack.wait_until_idle(10)
    assert_error(api.get(f"/imports/{outside}"), 404, "not_found")

    received: list[tuple[dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/imports"
        subscribed = api.post("/webhooks", json={"url": url, "events": ["import.completed"]})
        assert subscribed.status_code == 201, subscribed.text
        channel = unique("hook")
        data = orders_csv(csv_row(channel, "H-1"), csv_row(channel, "H-2"))

        report = finished(api, put_file(stack, "incoming/hooked.csv", data))

        deadline = time.monotonic() + 30
        while not received:
            assert time.monotonic() < deadline, "import.completed was not delivered in 30 s"
            time.sleep(0.1)
        [(headers, body)] = received
        event = json.loads(body)
        assert (headers["OMS-Event-Type"], event["type"]) == ("import.completed", "import.completed")
        assert headers["OMS-Event-Id"] == event["id"] and event["id"].startswith("evt_")
        assert verify_signature(subscribed.json()["secret"], headers["OMS-Signature"], body, int(time.time()))
        assert event["data"] == {"import": report, "errors_omitted": 0} and report["status"] == "completed"
    finally:
        server.shutdown()
        server.server_close()


# --- make import ----------------------------------------------------------------------------------


def run_make_import(env: dict[str, str], file: Path) -> subprocess.CompletedProcess[str]:
    # -o: the venv counts as installed (a test must not reinstall it).
    return subprocess.run(
        ["make", "--no-print-directory", "-o", ".venv/.installed", "import", f"FILE={file}"],
        cwd=ROOT,
        env={**os.environ, **env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_make_import_and_the_cli_through_the_state_file_make_run_writes_import_the_samples_and_print_their_summaries(
    stack: EmbeddedStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    env = {
        "OMS_API_URL": stack.api_url,
        "OMS_AWS_ENDPOINT": stack.aws_endpoint,
        "OMS_IMPORTS_BUCKET": stack.bucket_names["ImportsBucket"],
        "OMS_ADMIN_API_KEY": stack.admin_key,
        "OMS_STATE_FILE": str(tmp_path / "no-state.json"),
    }
    from infra.import_file import main

    first = run_make_import(env, SAMPLE_CSV)
    # The same CLI again, with the same environment, in this process: `make` and an interpreter of
    # their own were a second of CPU, and the run above is the one that shows `make import` works.
    for name, value in {**env, "COLUMNS": "200"}.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    again = main([str(SAMPLE_CSV)])
    second = capsys.readouterr()

    assert first.returncode == 0, first.stdout + first.stderr
    assert "completed_with_errors - 9 orders: 7 imported, 0 duplicates, 2 failed" in first.stdout
    assert "line 8" in first.stdout and "MKT-240104" in first.stdout and "unknown_sku" in first.stdout
    assert "line 9" in first.stdout and "invalid_number" in first.stdout
    assert again == 0, second.out + second.err
    assert "completed_with_errors - 9 orders: 0 imported, 7 duplicates, 2 failed" in second.out

    # `make run` writes the state file; the CLI (in this process too: `make import` above ran it as
    # `python -m infra.import_file`), with no OMS_ variable but that one, finds the stack in it.
    from infra.local.__main__ import remove_state, write_state

    state = tmp_path / ".oms-local.json"
    for name in [name for name in os.environ if name.startswith("OMS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OMS_STATE_FILE", str(state))
    write_state(stack)

    found = main([str(SAMPLE_JSONL)])
    run = capsys.readouterr()

    assert found == 0, run.out + run.err
    assert "completed_with_errors - 6 orders: 4 imported, 0 duplicates, 2 failed" in run.out
    assert "malformed_json" in run.out
    assert oct(state.stat().st_mode & 0o777) == "0o600"
    remove_state(state)
    assert not state.exists()


def test_a_split_resumed_after_an_interruption_calls_only_what_the_splitter_is_granted(
    stack: EmbeddedStack, api: Api, monkeypatch: pytest.MonkeyPatch
):
    """Lambda's retry of an interrupted split reads the file again and finds its bad rows recorded:
    it reads their markers (to keep an error a refused write left there). The splitter was granted
    only PutItem on the markers' table, so on AWS every retry of a file with a bad row before the
    interruption was AccessDenied, and the import never ended."""
    from functions.adapters.imports import SqsOrderQueue
    from tests.template_iam import calls_by_function, granted

    channel = unique("resume")
    rows = [csv_row(channel, "R-1", quantity="x"), csv_row(channel, "R-2")]
    data = orders_csv(*rows)
    send = SqsOrderQueue.flush
    interrupted: list[int] = []

    def flush_once_interrupted(queue: SqsOrderQueue) -> None:
        if queue._batch and not interrupted:  # the first split's batch: the bad row is recorded by now
            interrupted.append(len(queue._batch))
            raise ConnectionError("network down")
        send(queue)

    monkeypatch.setattr(SqsOrderQueue, "flush", flush_once_interrupted)
    with calls_by_function(stack) as calls:
        import_id = put_file(stack, "incoming/resumed.csv", data)
        deadline = time.monotonic() + 30
        # Failed as interrupted is no end: Lambda's retry of the event resumes the import.
        while (report := finished(api, import_id))["status"] == "failed" and time.monotonic() < deadline:
            assert report["errors"][0]["code"] == "split_interrupted", report
            time.sleep(0.1)
        assert stack.wait_until_idle(10)

    assert interrupted == [1]
    assert (report["status"], report["imported"], report["failed"]) == ("completed_with_errors", 1, 1)
    assert [(error["line"], error["code"]) for error in report["errors"]] == [(2, "invalid_number")]
    needed = calls["ImportSplitterFunction"]
    assert needed <= granted("ImportSplitterFunction"), f"not granted: {needed - granted('ImportSplitterFunction')}"


def test_a_file_the_splitter_runs_short_of_time_on_is_handed_on_to_itself_and_every_order_imported_once(
    stack: EmbeddedStack, api: Api, monkeypatch: pytest.MonkeyPatch
):
    """Out of time at every order (the reserve above the 15 minutes), each invocation queues one
    order and hands the rest on by an asynchronous Invoke of itself, which the local stack queues
    as Lambda does; every call that makes is granted."""
    from functions.import_splitter import app as splitter
    from tests.template_iam import calls_by_function, granted

    monkeypatch.setattr(splitter, "HAND_OFF_RESERVE_MILLIS", 10**9)
    channel = unique("handed")
    rows = [csv_row(channel, "H-1"), csv_row(channel, "H-2", quantity="x"), csv_row(channel, "H-3")]
    rows.append(csv_row(channel, "H-4", "NOT-A-SKU"))
    data = orders_csv(*rows)
    invoked = stack.functions["ImportSplitterFunction"].invocations

    with calls_by_function(stack) as calls:
        report = finished(api, put_file(stack, "incoming/handed-on.csv", data))
        assert stack.wait_until_idle(10)

    assert stack.functions["ImportSplitterFunction"].invocations - invoked == 4  # one an order
    assert (report["status"], report["total"], report["imported"], report["failed"]) == (
        "completed_with_errors",
        4,
        2,
        2,
    )
    assert [(error["line"], error["code"]) for error in report["errors"]] == [
        (3, "invalid_number"),
        (5, "unknown_sku"),
    ]
    imported = [order["external_id"] for order in api.list_all({"channel": channel})]
    assert sorted(imported) == ["H-1", "H-3"]
    needed = calls["ImportSplitterFunction"]
    assert ("ImportSplitterFunction", "lambda:InvokeFunction") in needed
    assert needed <= granted("ImportSplitterFunction"), f"not granted: {needed - granted('ImportSplitterFunction')}"


def test_an_import_a_killed_worker_left_short_is_recounted_by_the_reconciler_with_only_what_it_is_granted(
    stack: EmbeddedStack, api: Api, monkeypatch: pytest.MonkeyPatch
):
    """The worker dies between marking line 4 (a failure) and counting it: the import stays running
    one short. The reconciler's imports pass (idle threshold set to nothing here) recounts it from
    its markers, keeps the failure's error from its marker and completes it, calling only what the
    template grants it."""
    import copy
    import hashlib
    from datetime import timedelta

    import core.import_recount
    from functions.adapters.imports import DynamoImportLedger
    from tests.template_iam import calls_by_function, granted

    channel = unique("killed")
    rows = [csv_row(channel, "K-1"), csv_row(channel, "K-2"), csv_row(channel, "K-3", "NOT-A-SKU")]
    data = orders_csv(*rows)
    bucket = stack.bucket_names["ImportsBucket"]
    target = import_id_for(bucket, "incoming/killed.csv", hashlib.md5(data).hexdigest())  # its ETag
    real_record, killed = DynamoImportLedger.record, []

    class DiesBeforeCounting:
        def __init__(self, client: Any):
            self._client = client

        def __getattr__(self, name: str) -> Any:
            return getattr(self._client, name)

        def update_item(self, **request: Any) -> Any:
            raise RuntimeError("killed between marking the line and counting it")

    def record(self: DynamoImportLedger, import_id: str, line: int, *args: Any) -> Any:
        if (import_id, line) == (target, 4) and not killed:
            killed.append(line)
            dying = copy.copy(self)
            dying._client = DiesBeforeCounting(self._client)
            return real_record(dying, import_id, line, *args)
        return real_record(self, import_id, line, *args)

    monkeypatch.setattr(DynamoImportLedger, "record", record)
    assert put_file(stack, "incoming/killed.csv", data) == target
    deadline = time.monotonic() + 30
    while (short := api.get(f"/imports/{target}").json()).get("imported", 0) < 2 or not killed:
        assert time.monotonic() < deadline, short
        time.sleep(0.1)
    # Line 4's message comes back only after the queue's visibility timeout, and counts nothing.
    assert killed == [4]
    assert (short["status"], short["total"], short["imported"], short["failed"]) == ("running", 3, 2, 0)
    assert short["errors"] == []

    monkeypatch.setattr(core.import_recount, "RECOUNT_IDLE", timedelta(0))
    with calls_by_function(stack) as calls:
        stack.functions["ReconcilerFunction"].invoke({"detail-type": "Scheduled Event", "detail": {}})

    ended = api.get(f"/imports/{target}").json()
    assert (ended["status"], ended["imported"], ended["failed"]) == ("completed_with_errors", 2, 1)
    assert [(error["line"], error["code"]) for error in ended["errors"]] == [(4, "unknown_sku")]
    needed = calls["ReconcilerFunction"]
    assert ("IdempotencyTable", "dynamodb:BatchGetItem") in needed
    assert needed <= granted("ReconcilerFunction"), f"not granted: {needed - granted('ReconcilerFunction')}"

    # Line 4's message, in flight for the queue's 180 s, is all the stack has left to do: purged, and
    # the worker's mapping told to look (it sleeps until the message's timeout ends), the stack is
    # idle at the test's end, which waited the suite's 5 s for it (tests/conftest.py SETTLE_SECONDS).
    stack.client("sqs").purge_queue(QueueUrl=stack.queue_urls["ImportQueue"])
    stack.mappings["ImportWorkerFunction.ImportQueue"].resume()
    assert stack.wait_until_idle(10)
