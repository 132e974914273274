"""The import worker under moto: queued orders through the real capture path, outcomes recorded
once on their import, partial batch failures, and a poison message parked in the DLQ."""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from core import hookimpl
from core.ids import order_id_for
from infra.local.lambdas import LambdaContext
from tests.builders import csv_file, csv_row, order_body
from tests.integration.conftest import run_threads, written_once
from tests.integration.import_support import (
    ImportAws,
    before_puts,
    context,
    create_import_resources,
    error_pk,
    lambda_sqs_record,
    refuse_an_error_and_its_fallback,
    refuse_puts,
    report,
    seed_catalog,
    split,
    worker,
)


@pytest.fixture
def stack(aws: Any, monkeypatch: pytest.MonkeyPatch) -> ImportAws:
    imports = create_import_resources(aws, monkeypatch)
    seed_catalog()
    return imports


@pytest.fixture(autouse=True)
def only_granted_calls(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every call the import worker makes in these tests (a line counted, rejected, parked in the
    DLQ and unlisted by its redrive, refused writes) is one the template grants it, by table, key
    and action: moto lets through what AWS refuses."""
    if "stack" not in request.fixturenames:
        yield
        return
    from tests.template_iam import handlers_checked

    stack = request.getfixturevalue("stack")
    names = {"queue_urls": {"ImportQueue": stack.queue_url}, "bucket_names": {"ImportsBucket": stack.bucket}}
    with handlers_checked(monkeypatch, {"ImportWorkerFunction": "functions.import_worker.app"}, stack.tables, **names):
        yield


def metrics_counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the import worker's metrics, as it adds them (each still added)."""
    from functions.import_worker import app

    counted: list[str] = []
    add_metric = app.metrics.add_metric

    def counting(**metric: Any) -> None:
        counted.append(metric["name"])
        add_metric(**metric)

    monkeypatch.setattr(app.metrics, "add_metric", counting)
    return counted


def stored_order(channel: str, external_id: str) -> Any:
    from core.errors import NotFound
    from functions.import_worker.app import container

    try:
        return container().orders.get(order_id_for(channel, external_id))
    except NotFound:
        return None


def test_two_exports_joined_into_one_file_complete_as_one_import_reported_on_the_lines_an_editor_shows(
    stack: ImportAws,
):
    # The second export: saved by Excel in much of Europe (a byte order mark, semicolons, CRLF).
    first = csv_file(csv_row("ext-1", ship_line2='"Floor 3\nRing twice"'), csv_row("ext-2", "NOPE"))
    second = b"\xef\xbb\xbf" + csv_file(csv_row("ext-3"), newline="\r\n").replace(b",", b";")
    import_id = split(stack, "incoming/joined.csv", first + second)

    stack.drain(worker)

    imported = report(import_id)
    assert (imported["status"], imported["total"], imported["imported"], imported["failed"]) == (
        "completed_with_errors",
        4,
        1,
        3,
    )
    # Line 4 follows the line break in ext-1's quoted cell (refused: an address line is one line);
    # line 5 is the second export's header.
    assert [(e["line"], e["external_id"], e["code"]) for e in imported["errors"]] == [
        (2, "ext-1", "validation_error"),
        (4, "ext-2", "unknown_sku"),
        (5, None, "repeated_header"),
    ]
    assert "ship_line2: " in imported["errors"][0]["message"]
    assert "must not contain a line break" in imported["errors"][0]["message"]
    assert stored_order("market", "ext-3") is not None


class PoisonPrice:
    """A broken pricing plugin: it raises for one sku (a bug, not bad data)."""

    @hookimpl
    def oms_unit_price(self, product, quantity, currency, channel, customer):
        if product.sku == "POISON":
            raise RuntimeError("price service bug")
        return None


@pytest.fixture
def poison(stack: ImportAws) -> None:
    from core.models import ProductInput
    from functions.import_worker.app import container
    from tests.builders import product_body

    container().catalog.put_product("POISON", ProductInput.model_validate(product_body("1.00")))
    container().inventory.count("POISON", "wh-east", 100)
    container().plugins.register(PoisonPrice(), name="poison_price")


def test_a_split_file_is_captured_and_its_import_completes_with_per_line_errors(stack: ImportAws):
    data = csv_file(
        csv_row("ext-1"),
        csv_row("ext-1", "MUG", "2"),
        csv_row("ext-2", "NOPE"),
        csv_row("ext-3", quantity="0"),
        csv_row("ext-4", customer_email="not-an-email"),
        csv_row("ext-5", "MUG", "5000"),  # more than the 1000 in stock
        csv_row("ext-6"),
        csv_row("ext-6", "NOPE-EITHER"),
    )
    import_id = split(stack, "incoming/orders.csv", data)

    stack.drain(worker)

    imported = report(import_id)
    assert (imported["status"], imported["total"], imported["imported"], imported["failed"]) == (
        "completed_with_errors",
        6,
        1,
        5,
    )
    assert [(e["line"], e["external_id"], e["code"]) for e in imported["errors"]] == [
        (4, "ext-2", "unknown_sku"),
        (5, "ext-3", "validation_error"),
        (6, "ext-4", "validation_error"),
        (7, "ext-5", "insufficient_stock"),
        (9, "ext-6", "unknown_sku"),  # the order's second row, where the bad sku is
    ]
    messages = {e["line"]: e["message"] for e in imported["errors"]}
    assert messages[5].startswith("quantity:")  # CSV columns, not body paths
    assert messages[6].startswith("customer_email:")
    order = stored_order("market", "ext-1")
    assert [(line.sku, line.quantity) for line in order.lines] == [("TSHIRT", 1), ("MUG", 2)]
    assert order.status == "pending"


def test_an_order_with_two_bad_rows_is_one_error_on_the_first_bad_row_naming_both(stack: ImportAws):
    # The row an editor jumps to is the first one to fix; the message names every problem.
    data = csv_file(csv_row("ext-1"), csv_row("ext-1", "MUG", "0"), csv_row("ext-1", "TSHIRT", "0"))
    import_id = split(stack, "incoming/two-bad-rows.csv", data)

    stack.drain(worker)

    [error] = report(import_id)["errors"]
    assert (error["line"], error["external_id"], error["code"]) == (3, "ext-1", "validation_error")
    assert error["message"].count("quantity:") == 2


def test_a_file_cut_inside_its_last_quoted_cell_imports_every_order_before_the_cut_one(stack: ImportAws):
    # An upload interrupted in the middle of the last (quoted) cell: the cut order was imported
    # with the cut value as if it were whole.
    cut = csv_file(csv_row("ext-1"), csv_row("ext-1", "MUG"), csv_row("ext-2", payment_token='"tok_appr')).rstrip(b"\n")
    import_id = split(stack, "incoming/cut.csv", cut)

    stack.drain(worker)

    imported = report(import_id)
    assert (imported["status"], imported["total"], imported["imported"], imported["failed"]) == (
        "completed_with_errors",
        2,
        1,
        1,
    )
    assert [(e["line"], e["external_id"], e["code"]) for e in imported["errors"]] == [(4, "ext-2", "malformed_row")]
    assert len(stored_order("market", "ext-1").lines) == 2 and stored_order("market", "ext-2") is None


def test_an_order_arrives_with_the_history_naming_its_import_and_line(stack: ImportAws):
    from functions.import_worker.app import container

    import_id = split(stack, "incoming/orders.csv", csv_file(csv_row("ext-1")))
    stack.drain(worker)

    history = container().orders.history(order_id_for("market", "ext-1"))
    assert history[0].actor == f"{import_id}:2"


def test_a_message_delivered_twice_is_counted_once(stack: ImportAws):
    import_id = split(stack, "incoming/orders.csv", csv_file(csv_row("ext-1"), csv_row("ext-2", "NOPE")))
    (first, second) = stack.peek()
    for message in (first, second):  # SQS delivers at least once: both come again
        stack.sqs.send_message(
            QueueUrl=stack.queue_url, MessageBody=message["Body"], MessageAttributes=message["MessageAttributes"]
        )

    batches = stack.drain(worker)

    imported = report(import_id)
    assert (imported["status"], imported["imported"], imported["duplicates"], imported["failed"]) == (
        "completed_with_errors",
        1,
        0,
        1,
    )
    assert len(imported["errors"]) == 1
    # The deliveries that found their lines recorded succeed: none is retried, none waits in the DLQ.
    assert batches == 1 and stack.messages_waiting(stack.dlq_url) == 0


def test_importing_the_same_file_again_creates_nothing_and_counts_duplicates(stack: ImportAws):
    data = csv_file(csv_row("ext-1"), csv_row("ext-2"), csv_row("ext-3", "NOPE"))
    split(stack, "incoming/monday.csv", data)
    stack.drain(worker)
    first = stored_order("market", "ext-1")

    again = split(stack, "incoming/monday-again.csv", data)
    stack.drain(worker)

    imported = report(again)
    assert (imported["status"], imported["imported"], imported["duplicates"], imported["failed"]) == (
        "completed_with_errors",
        0,
        2,
        1,
    )
    assert stored_order("market", "ext-1") == first


def test_the_same_file_again_after_its_orders_took_the_last_units_counts_them_duplicates(stack: ImportAws):
    from functions.import_worker.app import container

    data = csv_file(csv_row("ext-1", "MUG", "1000"), csv_row("ext-2"))
    split(stack, "incoming/monday.csv", data)
    stack.drain(worker)
    container().inventory.count("MUG", "wh-east", 0)  # ext-1's units are gone (shipped, counted out)

    again = split(stack, "incoming/monday-again.csv", data)
    stack.drain(worker)

    imported = report(again)
    assert (imported["status"], imported["imported"], imported["duplicates"], imported["failed"]) == (
        "completed",
        0,
        2,
        0,
    )


def test_a_message_redelivered_after_its_order_took_the_last_units_counts_it_imported(stack: ImportAws, monkeypatch):
    from functions.adapters.imports import DynamoImportLedger
    from functions.import_worker.app import container

    import_id = split(stack, "incoming/orders.csv", csv_file(csv_row("ext-1", "MUG", "1000")))

    # The first delivery places the order and dies before recording it; by the redelivery, the
    # order's own reservation has taken the units.
    def killed(*args: Any) -> Any:
        raise TimeoutError("the worker ran out of time")

    with monkeypatch.context() as patched:
        patched.setattr(DynamoImportLedger, "record", killed)
        stack.deliver_once(worker)
    container().inventory.count("MUG", "wh-east", 0)

    stack.drain(worker)

    imported = report(import_id)
    assert (imported["status"], imported["imported"], imported["duplicates"], imported["failed"]) == (
        "completed",
        1,
        0,
        0,
    )
    assert stored_order("market", "ext-1") is not None


def test_a_batch_with_a_poison_message_reports_only_that_one_failed(stack: ImportAws, poison: None):
    rows = [csv_row(f"ext-{i}") for i in range(9)]
    rows.insert(4, csv_row("ext-poison", "POISON"))
    import_id = split(stack, "incoming/orders.csv", csv_file(*rows))

    records, failed = stack.deliver_once(worker)

    assert len(records) == 10
    (poisoned,) = [r for r in records if json.loads(r["body"])["external_id"] == "ext-poison"]
    assert failed == {poisoned["messageId"]}
    imported = report(import_id)
    assert (imported["status"], imported["imported"], imported["failed"]) == ("running", 9, 0)
    assert imported["errors"] == []  # retried: listed as parked only once its last delivery fails


class Left(LambdaContext):
    """The import worker's invocation with `millis` left at every ask."""

    def __init__(self, millis: int):
        super().__init__("ImportWorkerFunction", 512, WORKER_ARN, "test", 30)
        self._millis = millis

    def get_remaining_time_in_millis(self) -> int:
        return self._millis


WORKER_ARN = "arn:aws:lambda:us-east-1:123456789012:function:ImportWorkerFunction"


def test_messages_there_is_no_time_left_for_are_left_to_the_next_batch_and_each_order_imported_once(stack: ImportAws):
    """The worker worked through its whole batch whatever time it had left: 10 orders, each a few
    DynamoDB requests throttled and retried (standard mode: up to 3 s of backoff each) and the
    pricing plugins' calls, ran past its 30 s Timeout, and SQS handed the whole batch out again
    after the visibility timeout, every order captured again (counted duplicate: idempotent) and
    each message received once more towards the dead-letter queue. With less than
    RECORD_RESERVE_MILLIS left, no message after the first is started: the rest are reported
    failed unprocessed, and the next delivery imports each of them, once."""
    from functions.import_worker.app import RECORD_RESERVE_MILLIS

    import_id = split(stack, "incoming/orders.csv", csv_file(*[csv_row(f"ext-{n}") for n in range(3)]))

    records, failed = stack.deliver_once(worker, invocation=Left(RECORD_RESERVE_MILLIS - 1))

    assert len(records) == 3 and failed == {r["messageId"] for r in records[1:]}
    started = report(import_id)
    assert (started["status"], started["imported"], started["failed"], started["errors"]) == ("running", 1, 0, [])
    first = json.loads(records[0]["body"])["external_id"]
    assert {f"ext-{n}" for n in range(3) if stored_order("market", f"ext-{n}") is not None} == {first}
    records, failed = stack.deliver_once(worker, invocation=Left(RECORD_RESERVE_MILLIS))
    assert len(records) == 2 and failed == set()
    done = report(import_id)
    assert (done["status"], done["total"], done["imported"], done["failed"]) == ("completed", 3, 3, 0)


def test_a_message_left_for_lack_of_time_at_its_last_delivery_is_listed_on_its_import_as_parked(stack: ImportAws):
    """Held back at its last receive, a message goes to the dead-letter queue never tried: its import
    lists it there, as one whose last delivery failed, so the report says where the order waits."""
    from functions.import_worker.app import RECORD_RESERVE_MILLIS

    import_id = split(stack, "incoming/orders.csv", csv_file(csv_row("ext-1"), csv_row("ext-2")))
    for _ in range(4):  # received four times already: the next is its fifth, the queue's last
        assert len(stack.peek()) == 2

    records, failed = stack.deliver_once(worker, invocation=Left(RECORD_RESERVE_MILLIS - 1))

    (held,) = [r for r in records if r["messageId"] in failed]
    assert held["attributes"]["ApproximateReceiveCount"] == "5"
    line = json.loads(held["body"])["external_id"]
    waiting = report(import_id)
    assert (waiting["status"], waiting["imported"], waiting["failed"]) == ("running", 1, 0)
    assert [(e["external_id"], e["code"]) for e in waiting["errors"]] == [(line, "dead_lettered")]
    assert stack.deliver_once(worker) == ([], set())  # past the queue's 5 receives: in the DLQ
    (parked,) = stack.sqs.receive_message(QueueUrl=stack.dlq_url, MessageAttributeNames=["All"])["Messages"]
    stack.sqs.send_message(
        QueueUrl=stack.queue_url, MessageBody=parked["Body"], MessageAttributes=parked["MessageAttributes"]
    )
    stack.drain(worker)
    done = report(import_id)
    assert (done["status"], done["imported"], done["errors"]) == ("completed", 2, [])


def test_a_message_left_for_lack_of_time_at_its_last_delivery_after_an_earlier_one_recorded_it_is_not_listed(
    stack: ImportAws, caplog: pytest.LogCaptureFixture
):
    """An earlier delivery recorded the line and its worker died before the delete: held back at its
    last receive, the message goes to the dead-letter queue as any other held back, but its import
    neither lists it as parked nor counts it again, and its redrive counts nothing twice."""
    from functions.import_worker.app import RECORD_RESERVE_MILLIS

    import_id = split(stack, "incoming/orders.csv", csv_file(csv_row("ext-1"), csv_row("ext-2")))
    received = stack.sqs.receive_message(
        QueueUrl=stack.queue_url, MaxNumberOfMessages=10, AttributeNames=["All"], MessageAttributeNames=["All"]
    )["Messages"]
    worker({"Records": [lambda_sqs_record(m, stack.queue_url) for m in received]}, context("ImportWorkerFunction"))
    for message in received:  # not deleted: visible again, its receive counted
        stack.sqs.change_message_visibility(
            QueueUrl=stack.queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
        )
    recorded = report(import_id)
    assert (recorded["status"], recorded["imported"], recorded["errors"]) == ("completed", 2, [])
    for _ in range(3):  # the next receive is the fifth, the queue's last
        assert len(stack.peek()) == 2
    caplog.set_level(logging.WARNING)

    records, failed = stack.deliver_once(worker, invocation=Left(RECORD_RESERVE_MILLIS - 1))

    assert [r["attributes"]["ApproximateReceiveCount"] for r in records] == ["5", "5"] and len(failed) == 1
    assert report(import_id) == recorded
    (warned,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned.startswith("import message not started at its last delivery, too little time left")
    assert stack.deliver_once(worker) == ([], set())
    (parked,) = stack.sqs.receive_message(QueueUrl=stack.dlq_url, MessageAttributeNames=["All"])["Messages"]
    stack.sqs.send_message(
        QueueUrl=stack.queue_url, MessageBody=parked["Body"], MessageAttributes=parked["MessageAttributes"]
    )
    stack.drain(worker)
    assert report(import_id) == recorded


def test_a_message_whose_plugin_raises_is_one_error_line_naming_the_plugin_and_the_line(
    stack: ImportAws, poison: None, caplog: pytest.LogCaptureFixture
):
    # Both were ERROR with the plugin's traceback: `plugin raised`, and this worker's line, whose
    # PluginError chained it again.
    import_id = split(stack, "incoming/orders.csv", csv_file(csv_row("ext-poison", "POISON")))
    caplog.set_level(logging.INFO)

    (record,), failed = stack.deliver_once(worker)

    assert failed == {record["messageId"]}
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == ["plugin raised"]
    (raised,) = errors
    assert (raised.plugin, raised.hook, raised.reason) == ("poison_price", "oms_unit_price", "price service bug")
    assert [r.getMessage() for r in caplog.records if r.exc_info] == ["plugin raised"]
    (said,) = [r for r in caplog.records if r.getMessage() == "import message failed; SQS will deliver it again"]
    assert said.levelname == "WARNING"
    assert (said.plugin, said.hook, said.import_id, said.line) == ("poison_price", "oms_unit_price", import_id, 2)
    assert said.message_id == record["messageId"]


def test_a_worker_not_told_its_queue_s_max_receive_count_never_lists_a_failing_line_as_dead_lettered(
    stack: ImportAws, poison: None, monkeypatch: pytest.MonkeyPatch
):
    # IMPORT_QUEUE_MAX_RECEIVES unset (0): which delivery is the last cannot be told, so none is
    # taken for it. A line failing its first delivery is retried, never listed as waiting in the DLQ.
    from functions.import_worker.app import container

    monkeypatch.setenv("IMPORT_QUEUE_MAX_RECEIVES", "0")
    container.forget()
    container().plugins.register(PoisonPrice(), name="poison_price")
    import_id = split(stack, "incoming/orders.csv", csv_file(csv_row("ext-poison", "POISON")))

    (record,), failed = stack.deliver_once(worker)

    assert failed == {record["messageId"]}
    assert report(import_id)["errors"] == []


def test_a_poison_message_ends_in_the_dlq_after_5_receives_while_its_batch_is_processed(stack: ImportAws, poison: None):
    rows = [csv_row(f"ext-{i:02d}") for i in range(14)]
    rows.insert(3, csv_row("ext-poison", "POISON"))
    import_id = split(stack, "incoming/orders.csv", csv_file(*rows))

    stack.drain(worker)

    receives = [r for event in stack.invocations for r in event["Records"] if "ext-poison" in r["body"]]
    assert [r["attributes"]["ApproximateReceiveCount"] for r in receives] == ["1", "2", "3", "4", "5"]
    parked = stack.sqs.receive_message(QueueUrl=stack.dlq_url, MessageAttributeNames=["All"])["Messages"]
    assert [json.loads(m["Body"])["external_id"] for m in parked] == ["ext-poison"]
    assert parked[0]["MessageAttributes"]["import_id"]["StringValue"] == import_id
    imported = report(import_id)
    # The import waits for the parked order (redrive it once the plugin is fixed).
    assert (imported["status"], imported["total"], imported["imported"], imported["failed"]) == ("running", 15, 14, 0)
    assert stored_order("market", "ext-poison") is None


def test_a_redriven_message_completes_its_import(stack: ImportAws, poison: None):
    from functions.import_worker.app import container

    import_id = split(stack, "incoming/orders.csv", csv_file(csv_row("ext-1"), csv_row("ext-poison", "POISON")))
    stack.drain(worker)
    container().plugins.unregister(name="poison_price")  # the fix is deployed
    (parked,) = stack.sqs.receive_message(QueueUrl=stack.dlq_url, MessageAttributeNames=["All"])["Messages"]
    stack.sqs.send_message(
        QueueUrl=stack.queue_url, MessageBody=parked["Body"], MessageAttributes=parked["MessageAttributes"]
    )

    stack.drain(worker)

    assert report(import_id)["status"] == "completed"


def test_an_order_parked_in_the_dlq_is_listed_on_its_import_until_a_redrive_counts_it(stack: ImportAws, poison: None):
    # The import stayed running, one short, and nothing in its report said why or where the order was.
    from functions.import_worker.app import container

    rows = [csv_row("ext-1"), csv_row("ext-2", "NOPE"), csv_row("ext-poison", "POISON"), csv_row("ext-3")]
    import_id = split(stack, "incoming/orders.csv", csv_file(*rows))
    stack.drain(worker)

    waiting = report(import_id)
    assert (waiting["status"], waiting["total"], waiting["imported"], waiting["failed"]) == ("running", 4, 2, 1)
    assert [(e["line"], e["external_id"], e["code"]) for e in waiting["errors"]] == [
        (3, "ext-2", "unknown_sku"),
        (4, "ext-poison", "dead_lettered"),
    ]
    assert "dead-letter queue" in waiting["errors"][1]["message"]

    # Redriven before the fix: parked again, listed once.
    (parked,) = stack.sqs.receive_message(QueueUrl=stack.dlq_url, MessageAttributeNames=["All"])["Messages"]
    stack.sqs.delete_message(QueueUrl=stack.dlq_url, ReceiptHandle=parked["ReceiptHandle"])
    stack.sqs.send_message(
        QueueUrl=stack.queue_url, MessageBody=parked["Body"], MessageAttributes=parked["MessageAttributes"]
    )
    stack.drain(worker)
    assert [e["code"] for e in report(import_id)["errors"]] == ["unknown_sku", "dead_lettered"]

    container().plugins.unregister(name="poison_price")  # the fix is deployed, then the redrive
    (parked,) = stack.sqs.receive_message(QueueUrl=stack.dlq_url, MessageAttributeNames=["All"])["Messages"]
    stack.sqs.send_message(
        QueueUrl=stack.queue_url, MessageBody=parked["Body"], MessageAttributes=parked["MessageAttributes"]
    )
    stack.drain(worker)

    done = report(import_id)
    assert (done["status"], done["imported"], done["failed"]) == ("completed_with_errors", 3, 1)
    assert [(e["line"], e["code"]) for e in done["errors"]] == [(3, "unknown_sku")]


def test_orders_sent_directly_by_another_system_are_captured_and_bad_ones_never_retried(stack: ImportAws):
    good = order_body(channel="erp", external_id="erp-1", lines=[{"sku": "TSHIRT", "quantity": 1}])
    bad = order_body(channel="erp", external_id="erp-2", lines=[{"sku": "NOPE", "quantity": 1}])
    for body in (json.dumps(good), json.dumps(good), json.dumps(bad), "not json", json.dumps({**good, "total": 1})):
        stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=body)

    batches = stack.drain(worker)

    assert batches == 1  # nothing came back for a second try
    assert stored_order("erp", "erp-1").lines[0].sku == "TSHIRT"
    assert stored_order("erp", "erp-2") is None
    assert stack.messages_waiting(stack.dlq_url) == 0


def test_a_direct_order_sending_null_for_its_optional_fields_is_captured_as_one_leaving_them_out(stack: ImportAws):
    nulls = dict.fromkeys(["fulfillment", "shipping_method", "promo_codes"])
    body = order_body(channel="erp", external_id="erp-nulls", lines=[{"sku": "TSHIRT", "quantity": 1}], **nulls)
    stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=json.dumps(body))

    stack.drain(worker)

    order = stored_order("erp", "erp-nulls")
    assert order is not None
    assert (order.fulfillment.type, order.promo_codes) == ("ship", [])


def test_a_direct_order_without_an_external_id_is_refused_so_a_redelivery_cannot_double_it(stack: ImportAws):
    body = order_body(channel="erp", lines=[{"sku": "TSHIRT", "quantity": 1}])
    del body["external_id"]
    stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=json.dumps(body))

    stack.drain(worker)

    from core.ports import OrderFilter
    from functions.import_worker.app import container

    assert container().orders.list(OrderFilter(channel="erp"), 10, None)[0] == []


def test_a_direct_order_redelivered_after_its_worker_died_past_the_put_counts_imported_and_a_resent_one_is_logged(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    # A body another system sent has no import: its outcome is only the worker's metrics and log.
    # SQS delivers it again when the worker dies after the order's put (its timeout): that
    # redelivery found the order and counted it DuplicateOrders, logging nothing, as if the
    # sender had sent the order twice; a body sent again under an order already placed (its
    # external_id reused) left no trace but that metric.
    from core.services import CaptureService

    counted = metrics_counted(monkeypatch)
    body = json.dumps(order_body(channel="erp", external_id="erp-9", lines=[{"sku": "TSHIRT", "quantity": 1}]))
    stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=body)
    place = CaptureService.place

    def placed_then_killed(self: CaptureService, *args: Any, **kwargs: Any) -> Any:
        place(self, *args, **kwargs)
        raise TimeoutError("the worker ran out of time")

    with monkeypatch.context() as patched:
        patched.setattr(CaptureService, "place", placed_then_killed)
        _, failed = stack.deliver_once(worker)
    assert len(failed) == 1 and stored_order("erp", "erp-9") is not None

    stack.drain(worker)  # the redelivery of the same message

    assert counted == ["ImportedOrders"]

    stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=body)  # sent again: a new message
    caplog.set_level(logging.INFO)
    stack.drain(worker)

    assert counted == ["ImportedOrders", "DuplicateOrders"]
    said = [r for r in caplog.records if r.getMessage() == "order from the import queue already placed"]
    assert [getattr(r, "order_id", None) for r in said] == [order_id_for("erp", "erp-9")]


def test_concurrent_workers_never_lose_or_double_a_count(stack: ImportAws):
    from moto.sqs.models import DEFAULT_SENDER_ID

    from functions.adapters.imports import origin_from
    from functions.import_worker.app import container

    splitter = f"{DEFAULT_SENDER_ID}:oms-ImportSplitterFunction"  # a role's SenderId: id and session

    rows = [csv_row(f"ext-{i:02d}", "NOPE" if i % 4 == 0 else "TSHIRT") for i in range(40)]
    import_id = split(stack, "incoming/orders.csv", csv_file(*rows))
    # Every line's message taken off the queue, ten a receive (each hides those it returns): ~16
    # peeks, each putting its ten back one by one, drew the 40 at random for ~0.6 s of the test's
    # 1.7 s of CPU.
    bodies: dict[int, dict[str, Any]] = {}
    for _ in range(8):
        taken = stack.sqs.receive_message(
            QueueUrl=stack.queue_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
        )
        bodies.update((int(m["MessageAttributes"]["line"]["StringValue"]), m) for m in taken.get("Messages", []))
    assert len(bodies) == 40
    importer = container().importer
    errors: list[BaseException] = []

    def work(lines: list[int]) -> None:
        try:
            for line in lines:  # every line twice across the threads: a duplicate delivery each
                message = bodies[line]
                importer.import_order(message["Body"], origin_from(message["MessageAttributes"]), sender=splitter)
        except BaseException as error:
            errors.append(error)

    lines = sorted(bodies)
    run_threads(threading.Thread(target=work, args=(lines[i::4] + lines[(i + 1) % 4 :: 4],)) for i in range(4))

    assert errors == []
    imported = report(import_id)
    assert (imported["status"], imported["imported"], imported["duplicates"], imported["failed"]) == (
        "completed_with_errors",
        30,
        0,
        10,
    )
    assert len(imported["errors"]) == 10


def refuse_once(
    monkeypatch: pytest.MonkeyPatch,
    refused_when: Callable[[str], bool],
    code: str,
    operation: str = "update_item",
) -> list[str]:
    """The workers' import ledger: DynamoDB refuses (`code`, throttled past botocore's retries) the
    first `operation` that `refused_when` picks by its UpdateExpression (update_item) or by its
    item's pk (put_item). Returns the keys it refused."""
    from botocore.exceptions import ClientError

    from functions.import_worker.app import container

    ledger = container().import_ledger
    client = ledger._client
    refused: list[str] = []

    class RefusingOnce:
        def __getattr__(self, name: str) -> Any:
            return getattr(client, name)

        def update_item(self, **request: Any) -> Any:
            return self._refused_once("update_item", request)

        def put_item(self, **request: Any) -> Any:
            return self._refused_once("put_item", request)

        def _refused_once(self, called: str, request: dict[str, Any]) -> Any:
            pk = (request.get("Key") or request["Item"]).get("pk", {}).get("S", "")
            picked_by = request["UpdateExpression"] if called == "update_item" else pk
            if called == operation and refused_when(picked_by) and not refused:
                refused.append(pk)
                raise ClientError({"Error": {"Code": code, "Message": "rate of requests exceeds"}}, called)
            return getattr(client, called)(**request)

    monkeypatch.setattr(ledger, "_client", RefusingOnce())
    return refused


def test_a_count_dynamodb_refused_is_made_by_the_redelivery_so_the_import_still_completes(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch
):
    # Every line ADDs to its import's one item: a burst of workers can be throttled past botocore's
    # retries. The line's marker was already written, so the redelivery found it "recorded" and
    # counted nothing: the import stayed running, one short, for good.
    import_id = split(stack, "incoming/orders.csv", csv_file(csv_row("ext-1"), csv_row("ext-2")))
    refused = refuse_once(
        monkeypatch, lambda update: update.startswith("ADD"), "ProvisionedThroughputExceededException"
    )

    stack.drain(worker)

    assert refused == [f"IMPORT#{import_id}"]
    done = report(import_id)
    assert (done["status"], done["total"], done["imported"], done["duplicates"], done["failed"]) == (
        "completed", 2, 2, 0, 0,
    )  # fmt: skip


def test_a_redriven_parked_order_whose_count_is_refused_is_counted_and_unlisted_by_the_redelivery(
    stack: ImportAws, poison: None, monkeypatch: pytest.MonkeyPatch
):
    from functions.import_worker.app import container

    import_id = split(stack, "incoming/orders.csv", csv_file(csv_row("ext-1"), csv_row("ext-poison", "POISON")))
    stack.drain(worker)
    container().plugins.unregister(name="poison_price")
    (parked,) = stack.sqs.receive_message(QueueUrl=stack.dlq_url, MessageAttributeNames=["All"])["Messages"]
    stack.sqs.send_message(
        QueueUrl=stack.queue_url, MessageBody=parked["Body"], MessageAttributes=parked["MessageAttributes"]
    )
    refused = refuse_once(monkeypatch, lambda update: "parked" in update, "ProvisionedThroughputExceededException")

    stack.drain(worker)

    assert refused == [f"IMPORT#{import_id}"]
    done = report(import_id)
    assert (done["status"], done["imported"], done["errors"]) == ("completed", 2, [])


def test_an_import_whose_completing_write_was_refused_is_completed_by_the_redelivery(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch
):
    # The last line counted, then the write that ends the import was throttled: the redelivered
    # message found its line recorded and did nothing, and nothing else would ever end the import.
    import_id = split(stack, "incoming/orders.csv", csv_file(csv_row("ext-1")))
    refused = refuse_once(monkeypatch, lambda update: "finished_at" in update, "ThrottlingException")

    stack.drain(worker)

    assert refused == [f"IMPORT#{import_id}"]
    done = report(import_id)
    assert (done["status"], done["total"], done["imported"]) == ("completed", 1, 1)


def test_an_error_whose_write_was_refused_after_its_count_is_kept_by_the_redelivery(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch
):
    # The line's failure was counted, then the write of its error was throttled: the redelivered
    # message found its line recorded and did nothing, so the report said `failed: 1` and listed
    # no error for it, for good.
    import_id = split(stack, "incoming/orders.csv", csv_file(csv_row("ext-1"), csv_row("ext-2", "NOPE")))
    refused = refuse_once(monkeypatch, lambda pk: pk.endswith("#ERRORS"), "ThrottlingException", "put_item")

    stack.drain(worker)

    assert refused == [f"IMPORT#{import_id}#ERRORS"]
    done = report(import_id)
    assert (done["status"], done["imported"], done["failed"]) == ("completed_with_errors", 1, 1)
    assert [(e["line"], e["external_id"], e["code"]) for e in done["errors"]] == [(3, "ext-2", "unknown_sku")]


def test_an_error_whose_write_and_fallback_were_both_refused_after_its_count_is_kept_by_the_redelivery(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch
):
    # Counted, then DynamoDB refused the error's write and its fallback onto the line's marker:
    # the redelivery found the line recorded with nothing left to write, and the import (not short
    # of its total) is never recounted, so the report listed no error for the line, for good.
    from functions.import_worker.app import container

    import_id = split(stack, "incoming/orders.csv", csv_file(csv_row("ext-1"), csv_row("ext-2", "NOPE")))
    refused = refuse_an_error_and_its_fallback(container().import_ledger, monkeypatch)

    stack.drain(worker)

    assert refused == ["error", "fallback"]
    done = report(import_id)
    assert (done["status"], done["imported"], done["failed"]) == ("completed_with_errors", 1, 1)
    assert [(e["line"], e["external_id"], e["code"]) for e in done["errors"]] == [(3, "ext-2", "unknown_sku")]
    stack.drain(worker)  # nothing more comes, and nothing is listed twice
    assert report(import_id)["errors"] == done["errors"]


@pytest.mark.parametrize("another_lost", [False, True], ids=["one-failure", "another-error-lost"])
def test_a_line_s_error_is_listed_once_when_its_twin_writes_it_before_the_delivery_that_counted_it(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch, another_lost: bool
):
    # Two deliveries of one bad line at once: the first counted the failure and had not written
    # its error yet when the twin found the line recorded and the report short of an error, and
    # wrote that error under its line; then the first wrote it under its ordinal. GET /imports/{id}
    # listed the line twice; and (`another_lost`) with another line's error lost (its write and
    # fallback refused), the report looked whole to that line's redelivery, which kept nothing.
    from moto.sqs.models import DEFAULT_SENDER_ID as SQS_SENDER_ID

    from functions.adapters.imports import origin_from
    from functions.import_worker.app import container

    import_id = split(
        stack,
        "incoming/orders.csv",
        csv_file(csv_row("ext-1", "NOPE" if another_lost else "TSHIRT"), csv_row("ext-2", "NOPE")),
    )
    (twin,) = [message for message in stack.peek() if '"ext-2"' in message["Body"]]
    ledger = container().import_ledger
    refused = refuse_an_error_and_its_fallback(ledger, monkeypatch) if another_lost else []
    written: list[str] = []

    def twin_between_count_and_error(item: dict[str, Any]) -> None:
        if error_pk(item) and item["line"]["N"] == "3":
            written.append(item["sk"]["S"])
            if len(written) == 1:  # the delivery that counted line 3, about to write its error
                container().importer.import_order(
                    twin["Body"],
                    origin_from(twin["MessageAttributes"]),
                    sender=f"{SQS_SENDER_ID}:oms-ImportSplitterFunction",
                )

    before_puts(ledger, monkeypatch, twin_between_count_and_error)
    stack.drain(worker)

    assert written == (["000002", "line#3"] if another_lost else ["000001", "line#3"])
    assert refused == (["error", "fallback"] if another_lost else [])
    done = report(import_id)
    assert (done["status"], done["failed"]) == ("completed_with_errors", 2 if another_lost else 1)
    assert [e["line"] for e in done["errors"]] == ([2, 3] if another_lost else [3])
    assert {e["code"] for e in done["errors"]} == {"unknown_sku"}


def test_a_bad_line_s_error_lost_by_the_delivery_that_counted_it_is_kept_by_its_twin_that_found_it_counted(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch
):
    # Two deliveries of one bad line at once: the first counts the failure, DynamoDB refuses its
    # error's write and the fallback onto the line's marker, and it fails; the twin, past its own
    # look for the line's record, finds the line counted when it records it, and succeeds, which
    # deletes the message: no redelivery comes, so the twin is the one left to keep the error.
    from moto.sqs.models import DEFAULT_SENDER_ID as SQS_SENDER_ID

    from functions.adapters.imports import origin_from
    from functions.import_worker.app import container

    import_id = split(stack, "incoming/orders.csv", csv_file(csv_row("ext-1"), csv_row("ext-2", "NOPE")))
    (twin,) = [message for message in stack.peek() if '"ext-2"' in message["Body"]]
    importer, ledger = container().importer, container().import_ledger
    refused = refuse_an_error_and_its_fallback(ledger, monkeypatch)
    sender = f"{SQS_SENDER_ID}:oms-ImportSplitterFunction"
    is_recorded, raced = ledger.is_recorded, []

    def first_delivery_counts_meanwhile(import_id: str, line: int) -> bool:
        recorded = is_recorded(import_id, line)
        if line == 3 and not raced:  # the first delivery, from its own look to its record
            raced.append(line)
            with pytest.raises(Exception, match="slow down"):  # counted, its error kept nowhere
                importer.import_order(twin["Body"], origin_from(twin["MessageAttributes"]), sender=sender)
        return recorded

    monkeypatch.setattr(ledger, "is_recorded", first_delivery_counts_meanwhile)
    result = importer.import_order(twin["Body"], origin_from(twin["MessageAttributes"]), sender=sender)

    assert refused == ["error", "fallback"]
    assert (result.outcome, result.error.code if result.error else None) == ("failed", "unknown_sku")
    errors = report(import_id)["errors"]
    assert [(e["line"], e["external_id"], e["code"]) for e in errors] == [(3, "ext-2", "unknown_sku")]


def test_the_delivery_that_loses_the_put_to_its_twin_counts_the_order_imported_on_a_lagging_read(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch
):
    # Two deliveries of one line run at once: the twin's put won a moment ago and has not
    # recorded yet. The loser read the order's history eventually consistently, found no order
    # yet, and recorded the order its own import had just created as a duplicate.
    from moto.sqs.models import DEFAULT_SENDER_ID as SQS_SENDER_ID

    from core.models import PlaceOrder
    from functions.adapters.imports import origin_from
    from functions.import_worker.app import container

    import_id = split(stack, "incoming/orders.csv", csv_file(csv_row("ext-1")))
    (message,) = stack.peek()
    container().capture.place(PlaceOrder.model_validate(json.loads(message["Body"])), f"{import_id}:2")
    orders = container().order_repository._orders
    client = orders._client

    class Lagging:
        """An eventually consistent GetItem that has not seen the twin's put yet."""

        def __getattr__(self, name: str) -> Any:
            return getattr(client, name)

        def get_item(self, **request: Any) -> Any:
            return client.get_item(**request) if request.get("ConsistentRead") else {}

    monkeypatch.setattr(orders, "_client", Lagging())
    result = container().importer.import_order(
        message["Body"], origin_from(message["MessageAttributes"]), sender=f"{SQS_SENDER_ID}:oms-ImportSplitterFunction"
    )

    assert result.outcome == "imported"
    done = report(import_id)
    assert (done["status"], done["imported"], done["duplicates"]) == ("completed", 1, 0)


def test_an_import_completes_when_its_last_order_is_recorded_before_the_file_is_read(stack: ImportAws):
    from core.import_service import Outcome
    from core.models import utc_now
    from functions.import_worker.app import container

    ledger = container().import_ledger
    ledger.begin("imp_early", "s3://b/k", utc_now())
    ledger.record("imp_early", 2, Outcome.IMPORTED, None, utc_now())
    assert report("imp_early")["status"] == "running"

    ledger.finish_reading("imp_early", "csv", 1, utc_now())

    assert report("imp_early")["status"] == "completed"


def test_a_running_import_never_shows_fewer_orders_found_than_it_has_recorded(stack: ImportAws):
    # The splitter writes its running total every 1,000 orders while the workers record as they
    # go: a client following a 500-order file saw "total": 0 beside "imported": 3.
    from core.import_service import Outcome
    from core.models import utc_now
    from functions.import_worker.app import container

    ledger = container().import_ledger
    ledger.begin("imp_followed", "s3://b/k", utc_now())
    for line, outcome in ((2, Outcome.IMPORTED), (3, Outcome.DUPLICATE), (4, Outcome.FAILED)):
        ledger.record("imp_followed", line, outcome, None, utc_now())

    running = report("imp_followed")
    assert (running["status"], running["total_final"], running["total"]) == ("running", False, 3)
    listed = container().import_queries.list(10, None)[0]
    assert next(item for item in listed if item.id == "imp_followed").total == 3

    ledger.finish_reading("imp_followed", "csv", 5, utc_now())
    assert (report("imp_followed")["status"], report("imp_followed")["total"]) == ("running", 5)


def test_only_the_first_1000_errors_are_kept_and_failed_counts_them_all(stack: ImportAws, monkeypatch):
    from core.import_service import Outcome
    from core.imports import LineError
    from core.models import utc_now
    from functions.import_worker.app import container

    monkeypatch.setattr("functions.adapters.imports.MAX_REPORTED_ERRORS", 3)
    ledger = container().import_ledger
    ledger.begin("imp_errors", "s3://b/k", utc_now())
    for line in (9, 2, 7, 5, 3):
        error = LineError(line, f"ext-{line}", "unknown_sku", "no product")
        ledger.record("imp_errors", line, Outcome.FAILED, error, utc_now())

    imported = report("imp_errors")
    assert imported["failed"] == 5
    assert [e["line"] for e in imported["errors"]] == [2, 7, 9]  # the first three recorded, by line


def test_errors_kept_under_their_lines_past_the_cap_are_listed_by_line_not_by_their_keys_string_order(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch
):
    # The second failure's error (line 9) was lost with its fallback; two lines found recorded at
    # once each read the report short of one and wrote a marker's error under its line: line 9's
    # and line 20's (marked by a worker about to count it, past the cap). One too many: the cut
    # followed the keys' string order ("line#20" before "line#9") and dropped line 9's, one of the
    # first recorded.
    from botocore.exceptions import ClientError

    from core.import_service import Outcome
    from core.imports import LineError
    from core.models import utc_now
    from functions.adapters.imports import _error_fields, _marker_id
    from functions.import_worker.app import container

    monkeypatch.setattr("functions.adapters.imports.MAX_REPORTED_ERRORS", 3)
    ledger = container().import_ledger
    ledger.begin("imp_cut", "s3://b/k", utc_now())
    marker = {"outcome": {"S": "failed"}, "error": {"M": _error_fields(LineError(20, None, "unknown_sku", "no"))}}
    ledger._client.put_item(TableName=ledger._markers, Item={"id": {"S": _marker_id("imp_cut", 20)}, **marker})
    refused = refuse_puts(
        ledger,
        monkeypatch,
        lambda item: (
            "error" if error_pk(item) and item["line"]["N"] == "9" else "fallback" if "unkept_error" in item else None
        ),
    )
    for line in (2, 9, 50):  # ordinals 1 to 3: all kept
        try:
            ledger.record("imp_cut", line, Outcome.FAILED, LineError(line, None, "unknown_sku", "no"), utc_now())
        except ClientError:
            assert line == 9
    assert refused == ["error", "fallback"]
    assert [e["line"] for e in report("imp_cut")["errors"]] == [2, 50]
    written: list[str] = []

    def line_9_found_meanwhile(item: dict[str, Any]) -> None:
        if error_pk(item):
            written.append(item["sk"]["S"])
            if written == ["line#20"]:
                ledger.keep_lost_errors("imp_cut", [9])  # reads the report short of one too

    before_puts(ledger, monkeypatch, line_9_found_meanwhile)
    ledger.keep_lost_errors("imp_cut", [20])

    assert written == ["line#20", "line#9"]
    for _ in range(2):  # read afresh, then from what this instance read
        assert [e["line"] for e in report("imp_cut")["errors"]] == [2, 9, 50]
    assert ledger.get("imp_cut").failed == 3


def test_a_failure_counted_past_the_cap_is_never_listed_in_place_of_a_lost_error_of_the_first_ones(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch
):
    # Line 2's error (the first failure) was lost with its fallback, and lines 70 and 20 failed
    # past the cap: redeliveries that found them recorded read the report short of one, not
    # listing their lines, and wrote one of their errors under its line. The report listed as many
    # errors as it keeps, one of a failure counted past them, and line 2's redelivery then found
    # the report whole: its error, one of the first recorded, was never listed.
    from botocore.exceptions import ClientError

    from core.import_service import Outcome
    from core.imports import LineError
    from core.models import utc_now
    from functions.adapters.imports import DynamoImportLedger
    from functions.import_worker.app import container

    def failure(line: int) -> LineError:
        return LineError(line, f"ext-{line}", "unknown_sku", "no product")

    monkeypatch.setattr("functions.adapters.imports.MAX_REPORTED_ERRORS", 3)
    ledger = container().import_ledger
    # Another worker's, which has not seen this import's failures reach the cap.
    other = DynamoImportLedger(ledger._client, ledger._table, ledger._markers)
    ledger.begin("imp_past", "s3://b/k", utc_now())
    refused = refuse_an_error_and_its_fallback(ledger, monkeypatch)
    with pytest.raises(ClientError):
        ledger.record("imp_past", 2, Outcome.FAILED, failure(2), utc_now())
    for line in (50, 60):
        ledger.record("imp_past", line, Outcome.FAILED, failure(line), utc_now())
    marker_puts: list[str] = []
    for each in (ledger, other):
        before_puts(each, monkeypatch, lambda item: marker_puts.append(item["id"]["S"]) if "id" in item else None)

    ledger.record("imp_past", 70, Outcome.FAILED, failure(70), utc_now())  # said past the cap with its marker
    other.record("imp_past", 20, Outcome.FAILED, failure(20), utc_now())  # learns it from its count: one write more

    assert refused == ["error", "fallback"]
    assert sorted(marker_puts) == ["import#imp_past#20", "import#imp_past#20", "import#imp_past#70"]
    for each in (ledger, other):
        each.keep_lost_errors("imp_past", [70, 20])
        each.complete_if_done("imp_past", utc_now(), 20)
    assert [e["line"] for e in report("imp_past")["errors"]] == [50, 60]  # short of line 2's only
    ledger.keep_lost_errors("imp_past", [2])
    found = report("imp_past")
    assert (found["failed"], [e["line"] for e in found["errors"]]) == (5, [2, 50, 60])


def test_a_report_never_lists_more_errors_than_the_failures_it_counted(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch
):
    # A worker counted line 30's failure and had not written its error yet when a twin of line 7
    # (marked by a worker killed before its count: the recount counts it) found it recorded, the
    # report short of one, and wrote line 7's error under its line: then line 30's came, and the
    # report listed three errors beside `failed: 2`.
    from core.import_service import Outcome
    from core.imports import LineError
    from core.models import utc_now
    from functions.adapters.imports import _error_fields, _marker_id
    from functions.import_worker.app import container

    ledger = container().import_ledger
    ledger.begin("imp_over", "s3://b/k", utc_now())
    assert ledger.record("imp_over", 2, Outcome.FAILED, LineError(2, None, "unknown_sku", "no"), utc_now()) == "counted"
    written: list[str] = []

    def line_7_found_meanwhile(item: dict[str, Any]) -> None:
        if error_pk(item):
            written.append(item["sk"]["S"])
            if written == ["000002"]:
                marker = {
                    "outcome": {"S": "failed"},
                    "error": {"M": _error_fields(LineError(7, None, "no_stock", "no"))},
                }
                ledger._client.put_item(
                    TableName=ledger._markers, Item={"id": {"S": _marker_id("imp_over", 7)}, **marker}
                )
                ledger.keep_lost_errors("imp_over", [7])

    before_puts(ledger, monkeypatch, line_7_found_meanwhile)
    assert (
        ledger.record("imp_over", 30, Outcome.FAILED, LineError(30, None, "unknown_sku", "no"), utc_now()) == "counted"
    )

    assert written == ["000002", "line#7"]  # line 30's error is put after line 7's
    for _ in range(2):  # read afresh, then from what this instance read
        found = report("imp_over")
        assert (found["failed"], [e["line"] for e in found["errors"]]) == (2, [2, 30])


def test_a_followed_report_reads_only_new_errors_and_rereads_past_a_gap(stack: ImportAws):
    """A client polling a running import must not make every poll read every kept error; an error
    counted but not yet written (a worker between its two writes) must not be skipped for good."""
    from core.import_service import Outcome
    from core.imports import LineError
    from core.models import utc_now
    from functions.adapters.imports import _error_key, _import_key
    from functions.import_worker.app import container

    ledger, client = container().import_ledger, container().dynamodb
    queries: list[str] = []

    def count_query(params: dict[str, Any], **_: Any) -> None:
        queries.append(params["ExpressionAttributeValues"][":after"]["S"])

    def fail(line: int) -> None:
        error = LineError(line, f"ext-{line}", "unknown_sku", "no product")
        assert ledger.record("imp_follow", line, Outcome.FAILED, error, utc_now()) == "counted"

    def lines() -> list[int | None]:
        found = ledger.get("imp_follow")
        assert found is not None
        return [entry.line for entry in found.errors]

    ledger.begin("imp_follow", "s3://b/k", utc_now())
    client.meta.events.register("before-parameter-build.dynamodb.Query", count_query)
    try:
        fail(30)
        fail(10)
        assert lines() == [10, 30]
        assert lines() == [10, 30]
        assert len(queries) == 1  # the second poll had nothing new to read

        # Failure 3 is counted, its error not written yet; failure 4 is complete.
        client.update_item(
            TableName=stack.tables["CatalogTable"], Key=_import_key("imp_follow"),
            UpdateExpression="ADD failed :one", ExpressionAttributeValues={":one": {"N": "1"}},
        )  # fmt: skip
        fail(20)
        assert lines() == [10, 20, 30]
        assert lines() == [10, 20, 30]
        assert queries[1:] == ["000002", "000002"]  # past the gap, read again

        client.put_item(
            TableName=stack.tables["CatalogTable"],
            Item={
                **_error_key("imp_follow", 3), "line": {"N": "5"}, "code": {"S": "unknown_sku"},
                "message": {"S": "no product"},
            },
        )  # fmt: skip
        assert lines() == [5, 10, 20, 30]
        assert lines() == [5, 10, 20, 30]
        assert queries[3:] == ["000002"]  # then nothing more to read
    finally:
        client.meta.events.unregister("before-parameter-build.dynamodb.Query", count_query)


def test_a_line_s_error_kept_under_two_ordinals_is_listed_once_read_afresh_or_from_what_was_read(
    stack: ImportAws,
):
    # A recount that read the kept errors while a worker that had counted a failure had not yet
    # written its error keeps that error too, under an ordinal after those counted: the line's
    # error is then under two ordinals. Both reads of the report (the second from the errors the
    # first read, past no gap) list it once.
    from core.import_service import Outcome
    from core.imports import LineError
    from core.models import utc_now
    from functions.adapters.imports import _error_key, _import_key
    from functions.import_worker.app import container

    ledger, client = container().import_ledger, container().dynamodb
    ledger.begin("imp_twice", "s3://b/k", utc_now())
    for line in (10, 20):
        error = LineError(line, None, "unknown_sku", "no")
        assert ledger.record("imp_twice", line, Outcome.FAILED, error, utc_now()) == "counted"
    client.update_item(
        TableName=stack.tables["CatalogTable"], Key=_import_key("imp_twice"),
        UpdateExpression="ADD failed :one", ExpressionAttributeValues={":one": {"N": "1"}},
    )  # fmt: skip
    client.put_item(
        TableName=stack.tables["CatalogTable"],
        Item={**_error_key("imp_twice", 3), "line": {"N": "10"}, "code": {"S": "unknown_sku"}, "message": {"S": "no"}},
    )

    for _ in range(2):
        found = ledger.get("imp_twice")
        assert found is not None
        assert [entry.line for entry in found.errors] == [10, 20]
    assert [entry.line for entry in ledger._read_errors["imp_twice"]] == [10, 20, 10]  # all three read


# --- Senders (issue 10 item 5) --------------------------------------------------------------------


@pytest.fixture
def another_sender(stack: ImportAws, monkeypatch: pytest.MonkeyPatch) -> str:
    """moto's one SenderId made a sender that is not the splitter, allowed channel `erp` only."""
    from moto.sqs.models import DEFAULT_SENDER_ID

    from functions.import_worker.app import container

    monkeypatch.setenv("IMPORT_SPLITTER_ROLE_ID", "AROASPLITTERROLEID")
    monkeypatch.setenv("IMPORT_QUEUE_SENDER_CHANNELS", f"{DEFAULT_SENDER_ID}=erp+pos")
    container.forget()  # the next message builds the worker with these senders
    yield DEFAULT_SENDER_ID
    container.forget()


def test_a_sender_places_orders_only_for_its_channels_and_a_refused_one_is_not_retried(
    stack: ImportAws, another_sender: str
):
    allowed = order_body(channel="erp", external_id="erp-1", lines=[{"sku": "TSHIRT", "quantity": 1}])
    claimed = order_body(channel="market", external_id="mk-1", lines=[{"sku": "TSHIRT", "quantity": 1}])
    for body in (allowed, claimed):
        stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=json.dumps(body))

    batches = stack.drain(worker)

    assert batches == 1  # the refused order is a per-order error, not a poison message
    assert stack.messages_waiting(stack.dlq_url) == 0
    assert stored_order("erp", "erp-1") is not None
    assert stored_order("market", "mk-1") is None


def test_a_line_naming_an_import_that_does_not_exist_is_not_taken_for_a_line_recorded_before(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    # record() answered False both for a line recorded before and for one with no import to count
    # it on (none such, or one recounted from its markers): the worker then read the import again
    # for a lost error of the line, and logged the line "already recorded" after "no such import".
    import logging

    from functions.import_worker.app import container

    ledger = container().import_ledger
    looked: list[list[int]] = []
    keep_lost_errors = ledger.keep_lost_errors

    def looking(import_id: str, lines: list[int]) -> None:
        looked.append(lines)
        keep_lost_errors(import_id, lines)

    monkeypatch.setattr(ledger, "keep_lost_errors", looking)
    body = order_body(channel="market", external_id="gone-1", lines=[{"sku": "TSHIRT", "quantity": 1}])
    attributes = {  # from the splitter's sender, unsigned: an import begun before lines were signed
        "import_id": {"DataType": "String", "StringValue": "imp_" + "a" * 24},
        "line": {"DataType": "Number", "StringValue": "2"},
    }
    stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=json.dumps(body), MessageAttributes=attributes)
    caplog.set_level(logging.INFO)

    stack.drain(worker)

    assert stored_order("market", "gone-1") is not None  # captured all the same
    logged = [record.getMessage() for record in caplog.records]
    assert "no such import to record on" in logged
    assert ("import line already recorded" in logged, looked) == (False, [])


def test_a_sender_that_is_not_the_splitter_cannot_write_on_an_import(stack: ImportAws, another_sender: str):
    from functions.import_worker.app import container

    import_id = split(stack, "incoming/orders.csv", csv_file(csv_row("ext-1")))
    before = report(import_id)
    forged = order_body(channel="erp", external_id="erp-7", lines=[{"sku": "TSHIRT", "quantity": 1}])
    attributes = {
        "import_id": {"DataType": "String", "StringValue": import_id},
        "line": {"DataType": "String", "StringValue": "99"},
    }
    stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=json.dumps(forged), MessageAttributes=attributes)
    # The splitter's own message (line 2) also comes from moto's one sender, now "another system":
    # its signature says the splitter made it, so it counts on its import, channel `market` and all.

    stack.drain(worker)

    after = report(import_id)
    assert (after["imported"], after["failed"], after["errors"]) == (before["imported"] + 1, before["failed"], [])
    assert after["status"] == "completed"  # line 99 never counted
    order = stored_order("erp", "erp-7")
    assert order is not None  # captured as a direct order of an allowed channel
    assert container().orders.history(order.id)[0].actor == f"sqs:{another_sender}"
    assert stored_order("market", "ext-1") is not None


# --- Signed import lines (issue 11 item 3) --------------------------------------------------------


def test_forged_import_attributes_count_on_no_import_whoever_sends_them(stack: ImportAws):
    """moto gives every message the splitter's SenderId: here that is the operator who redrives
    the DLQ (trusted like the splitter), sending again what anyone could have put in it. Before
    lines were signed, the sender's trust alone let a forged line count on the import."""
    import_id = split(stack, "incoming/orders.csv", csv_file(csv_row("ext-1"), csv_row("ext-2", "NOPE")))
    genuine = {int(m["MessageAttributes"]["line"]["StringValue"]): m for m in stack.peek()}
    assert sorted(genuine) == [2, 3]
    signed = {
        name: {"DataType": v["DataType"], "StringValue": v["StringValue"]}
        for name, v in genuine[2]["MessageAttributes"].items()
    }
    claim = order_body(channel="market", external_id="forged-1", lines=[{"sku": "NOPE", "quantity": 1}])
    forgeries = [
        ({"import_id": signed["import_id"], "line": {"DataType": "Number", "StringValue": "99"}}, claim),
        (signed, claim),  # a real signature over another body
        ({**signed, "line": {"DataType": "Number", "StringValue": "4"}}, json.loads(genuine[2]["Body"])),
        ({**signed, "signature": {"DataType": "String", "StringValue": "0" * 64}}, claim),
    ]
    for attributes, body in forgeries:
        stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=json.dumps(body), MessageAttributes=attributes)

    stack.drain(worker)

    after = report(import_id)
    assert (after["status"], after["total"], after["imported"], after["duplicates"], after["failed"]) == (
        "completed_with_errors",
        2,
        1,
        0,
        1,
    )
    assert [error["line"] for error in after["errors"]] == [3]  # the splitter's own bad line only
    assert "signing_key" not in after and "signature" not in json.dumps(after)


def test_a_forged_line_naming_an_import_before_its_file_is_split_counts_on_no_import_once_it_is(stack: ImportAws):
    # A worker that found no key for an import not begun yet must look again: the import gets its
    # key when its file is split. Remembered as keyless, the import fell back to trusting the
    # sender, and a later unsigned line counted on it.
    claim = order_body(channel="market", external_id="forged-1", lines=[{"sku": "NOPE", "quantity": 1}])
    data = csv_file(csv_row("ext-1"))
    import_id = stack.put_file("incoming/orders.csv", data)  # uploaded, its event not handled yet

    def forge(line: int) -> None:
        attributes = {
            "import_id": {"DataType": "String", "StringValue": import_id},
            "line": {"DataType": "Number", "StringValue": str(line)},
        }
        stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=json.dumps(claim), MessageAttributes=attributes)

    forge(3)
    stack.drain(worker)  # no such import yet: counted on nothing
    assert split(stack, "incoming/orders.csv", data) == import_id
    forge(4)
    stack.drain(worker)

    after = report(import_id)
    assert (after["status"], after["total"], after["imported"], after["failed"]) == ("completed", 1, 1, 0)
    assert after["errors"] == []


def test_a_forged_import_line_that_keeps_failing_is_never_listed_on_the_import(stack: ImportAws, poison: None):
    # A line's last failed delivery lists it on its import: only a line the import's splitter signed.
    import_id = split(stack, "incoming/orders.csv", csv_file(csv_row("ext-1")))
    (genuine,) = stack.peek()
    signed = {
        name: {"DataType": v["DataType"], "StringValue": v["StringValue"]}
        for name, v in genuine["MessageAttributes"].items()
    }
    forged = order_body(channel="market", external_id="forged-1", lines=[{"sku": "POISON", "quantity": 1}])
    stack.sqs.send_message(
        QueueUrl=stack.queue_url,
        MessageBody=json.dumps(forged),
        MessageAttributes={**signed, "line": {"DataType": "Number", "StringValue": "7"}},
    )

    stack.drain(worker)

    parked = stack.sqs.receive_message(QueueUrl=stack.dlq_url)["Messages"]
    assert [json.loads(m["Body"])["external_id"] for m in parked] == ["forged-1"]
    after = report(import_id)
    assert (after["status"], after["imported"], after["errors"]) == ("completed", 1, [])


def test_a_signed_line_redriven_by_another_sender_still_counts_on_its_import(stack: ImportAws, monkeypatch):
    """Signed, a line needs no trusted sender: an operator not named in ImportQueueSenderChannels
    who redrives the DLQ sends it again and it counts, once."""
    from functions.import_worker.app import container

    import_id = split(stack, "incoming/orders.csv", csv_file(csv_row("ext-1")))
    (message,) = stack.peek()
    stack.sqs.purge_queue(QueueUrl=stack.queue_url)  # as if it had been moved to the DLQ
    monkeypatch.setenv("IMPORT_SPLITTER_ROLE_ID", "AROASPLITTERROLEID")  # moto's sender is someone else now
    container.forget()
    attributes = {
        n: {"DataType": v["DataType"], "StringValue": v["StringValue"]} for n, v in message["MessageAttributes"].items()
    }
    stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=message["Body"], MessageAttributes=attributes)

    stack.drain(worker)
    container.forget()

    after = report(import_id)
    assert (after["status"], after["imported"], after["duplicates"], after["failed"]) == ("completed", 1, 0, 0)
    order = stored_order("market", "ext-1")
    assert order is not None and container().orders.history(order.id)[0].actor == f"{import_id}:2"


def test_a_deeply_nested_message_is_refused_on_its_own_never_a_poison_message(stack: ImportAws):
    # Past the parser's limit json.loads raised RecursionError; a few hundred levels overflowed the
    # card-number check's recursion: either way the message failed five times into the DLQ.
    good = order_body(channel="erp", external_id="erp-1", lines=[{"sku": "TSHIRT", "quantity": 1}])
    bomb = '{"channel": "erp", "external_id": "erp-2", "lines": ' + "[" * 100_000 + "]" * 100_000 + "}"
    deep = order_body(channel="erp", external_id="erp-3", lines=[{"sku": "TSHIRT", "quantity": 1}])
    deep["metadata"] = functools.reduce(lambda inner, _: [inner], range(600), "x")
    for body in (bomb, json.dumps(deep), json.dumps(good)):
        stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=body)

    batches = stack.drain(worker)

    assert batches == 1  # nothing came back for a second try
    assert stack.messages_waiting(stack.dlq_url) == 0
    assert stored_order("erp", "erp-1") is not None
    assert stored_order("erp", "erp-2") is None and stored_order("erp", "erp-3") is None


def test_an_order_whose_total_reaches_10_to_the_15_is_an_error_on_its_line_never_a_poison_message(stack: ImportAws):
    seed_catalog({"GOLD": "999999999999999.00"})
    data = csv_file(csv_row("ext-1"), csv_row("ext-2", "GOLD", "2"), csv_row("ext-3", "MUG"))
    import_id = split(stack, "incoming/gold.csv", data)

    batches = stack.drain(worker)

    imported = report(import_id)
    assert batches == 1  # nothing came back for a second try
    assert (imported["status"], imported["imported"], imported["failed"]) == ("completed_with_errors", 2, 1)
    assert [(e["line"], e["external_id"], e["code"]) for e in imported["errors"]] == [(3, "ext-2", "amount_too_large")]
    assert stack.messages_waiting(stack.dlq_url) == 0


@pytest.mark.parametrize(
    "body",
    [
        '{"channel": "erp", "notes": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"channel": "erp", "quantity": ' + "9" * 5_000 + "}",
        json.dumps(order_body(channel="erp", external_id="erp-hostile"))[:-1] + ', "channel": "erp"}',
        json.dumps([order_body(channel="erp", external_id="erp-hostile")]),
    ],
    ids=["deeply nested", "huge integer", "duplicate keys", "top-level array"],
)
def test_a_hostile_message_is_rejected_never_retried(stack: ImportAws, body: str):
    good = order_body(channel="erp", external_id="erp-good", lines=[{"sku": "TSHIRT", "quantity": 1}])
    for message in (body, json.dumps(good)):
        stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=message)

    batches = stack.drain(worker)

    assert batches == 1  # nothing came back for a second try
    assert stored_order("erp", "erp-good") is not None
    assert stored_order("erp", "erp-hostile") is None
    assert stack.messages_waiting(stack.dlq_url) == 0


def test_a_json_line_with_a_number_past_what_a_float_holds_is_an_error_on_its_line_saying_so(stack: ImportAws):
    # Read as Infinity, the line was queued with `Infinity` in its body (no JSON has it), and the
    # worker reported "the message has Infinity, which is not JSON": a word the file never had.
    huge = json.dumps(order_body(channel="market", external_id="big-1")).replace('"quantity": 2', '"quantity": 1e309')
    good = json.dumps(order_body(channel="market", external_id="big-2", lines=[{"sku": "TSHIRT", "quantity": 1}]))
    import_id = split(stack, "incoming/big.jsonl", (huge + "\n" + good + "\n").encode())

    assert all("Infinity" not in message["Body"] for message in stack.peek())
    stack.drain(worker)

    imported = report(import_id)
    assert (imported["status"], imported["imported"], imported["failed"]) == ("completed_with_errors", 1, 1)
    ((line, code, message),) = [(e["line"], e["code"], e["message"]) for e in imported["errors"]]
    assert (line, code) == (1, "malformed_json")
    assert message.startswith("the line has a number") and "too large" in message


@pytest.mark.parametrize(
    ("country", "postal_code", "region", "elsewhere"),
    [
        ("US", "94105", "CA", "OR"),  # Oregon has no sales tax; 94105 is in California
        ("CA", "M5V 2T6", "ON", "AB"),  # Alberta's 5% is Canada's lowest; M5V 2T6 is in Toronto, Ontario
    ],
)
def test_a_region_that_is_garbled_or_not_where_its_postal_code_is_is_an_error_on_its_line(
    stack: ImportAws, country: str, postal_code: str, region: str, elsewhere: str
):
    address = {"ship_country": country, "ship_postal_code": postal_code}
    data = csv_file(
        csv_row("ext-1", **{**address, "ship_region": ""}),
        csv_row("ext-2", **{**address, "ship_region": "XX"}),
        csv_row("ext-3", **{**address, "ship_region": elsewhere}),
        csv_row("ext-4", **{**address, "ship_postal_code": "1"}),
    )
    import_id = split(stack, "incoming/regions.csv", data)

    stack.drain(worker)

    imported = report(import_id)
    assert (imported["imported"], imported["failed"]) == (1, 3)
    assert [(e["line"], e["external_id"], e["code"]) for e in imported["errors"]] == [
        (3, "ext-2", "validation_error"),
        (4, "ext-3", "validation_error"),
        (5, "ext-4", "validation_error"),
    ]
    assert [e["message"].split(":")[0] for e in imported["errors"]] == [
        "ship_region",
        "ship_region",
        "ship_postal_code",
    ]
    postal = "ZIP code" if country == "US" else "postal code"
    assert imported["errors"][1]["message"] == f"ship_region: {postal} {postal_code} is in {region}, not {elsewhere}"
    assert stored_order("market", "ext-1").shipping_address.region == region


WELL_FORMED = "imp_" + "a" * 24  # an import id as the splitter makes them


@pytest.mark.parametrize(
    "attributes",
    [
        {"import_id": WELL_FORMED, "line": "²"},
        {"import_id": WELL_FORMED, "line": "2", "line_numbers": "2,³"},
        {"import_id": WELL_FORMED, "line": "9" * 5_000},
        {"import_id": WELL_FORMED, "line": "2", "line_numbers": "9" * 5_000},
        {"import_id": "imp_" + "a" * 3_000, "line": "2"},
    ],
    ids=["superscript line", "superscript line number", "huge line", "huge line number", "huge import id"],
)
def test_import_attributes_the_splitter_never_writes_are_ignored_never_a_poison_message(
    stack: ImportAws, attributes: dict[str, str]
):
    # The splitter writes plain ASCII numbers: anything else is not its message, so the order is
    # taken as sent directly (str.isdigit passed "²", which int() then refused, on every delivery).
    good = order_body(channel="erp", external_id="erp-1", lines=[{"sku": "TSHIRT", "quantity": 1}])
    stack.sqs.send_message(
        QueueUrl=stack.queue_url,
        MessageBody=json.dumps(good),
        MessageAttributes={name: {"DataType": "String", "StringValue": value} for name, value in attributes.items()},
    )

    batches = stack.drain(worker)

    assert batches == 1  # nothing came back for a second try
    assert stored_order("erp", "erp-1") is not None
    assert stack.messages_waiting(stack.dlq_url) == 0


def test_a_line_with_an_invisible_character_or_a_line_separator_fails_naming_its_column_or_field(stack: ImportAws):
    # As POST /orders: a name that hides a character, or breaks a line where none may be, is refused.
    csv_import = split(
        stack,
        "incoming/hidden.csv",
        csv_file(
            csv_row("hid-1", customer_name="Ada\u200bLovelace"),
            csv_row("hid-2", ship_line1="1 Market St\u2028Apt 9"),
            csv_row("hid-3"),
        ),
    )
    jsonl = order_body(channel="market", external_id="hid-4", lines=[{"sku": "TSHIRT", "quantity": 1}])
    jsonl["customer"]["email"] = "ada\ufeff@example.com"
    jsonl_import = split(stack, "incoming/hidden.jsonl", (json.dumps(jsonl) + "\n").encode())

    stack.drain(worker)

    errors = {e["external_id"]: e for e in report(csv_import)["errors"] + report(jsonl_import)["errors"]}
    assert {external_id: e["code"] for external_id, e in errors.items()} == dict.fromkeys(
        ("hid-1", "hid-2", "hid-4"), "validation_error"
    )
    assert errors["hid-1"]["message"].startswith("customer_name:") and "U+200B" in errors["hid-1"]["message"]
    assert errors["hid-2"]["message"].startswith("ship_line1:") and "U+2028" in errors["hid-2"]["message"]
    assert errors["hid-4"]["message"].startswith("customer.email:") and "U+FEFF" in errors["hid-4"]["message"]
    assert stored_order("market", "hid-1") is None and stored_order("market", "hid-3") is not None


class RunningShort(LambdaContext):
    """A splitter's context whose 15 minutes run low once it has queued `orders` orders (the split
    asks before each order but its first)."""

    def __init__(self, orders: int):
        super().__init__("ImportSplitterFunction", 512, SPLITTER_ARN, "test", 900)
        self.checks = 0
        self.orders = orders

    def get_remaining_time_in_millis(self) -> int:
        from functions.import_splitter.app import HAND_OFF_RESERVE_MILLIS

        self.checks += 1
        return 900_000 if self.checks < self.orders else HAND_OFF_RESERVE_MILLIS - 1


SPLITTER_ARN = "arn:aws:lambda:us-east-1:123456789012:function:ImportSplitterFunction"


class AsyncInvokes:
    """The splitter's Lambda client: asynchronous invocations kept, for the test to play."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def invoke(self, **request: Any) -> dict[str, Any]:
        self.calls.append(request)
        return {"StatusCode": 202}


def test_a_file_the_splitter_runs_short_of_time_on_continues_in_new_invocations_each_order_queued_once(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch
):
    from functions.import_splitter.app import container as splitter_container
    from functions.import_splitter.app import lambda_handler as splitter

    invokes = AsyncInvokes()
    monkeypatch.setattr(type(splitter_container()), "lambda_", property(lambda self: invokes))
    rows = [csv_row(f"ext-{i:02d}", "NOPE" if i == 7 else "TSHIRT", "x" if i == 11 else "1") for i in range(20)]
    rows[6:6] = [csv_row("ext-05", "MUG", "2")]  # ext-05 is two rows: lines 7 and 8
    rows.append(csv_row("ext-02"))  # reopens an order closed at its start: read again, still caught
    import_id = stack.put_file("incoming/big.csv", csv_file(*rows))
    event = stack.s3_event("incoming/big.csv")

    invocations, payload = 0, event
    while payload is not None:
        invocations += 1
        splitter(payload, RunningShort(orders=4))  # 4 orders each, then its time is up
        running = report(import_id)
        assert running["status"] == "running"
        # Sent before it hands on: a batch left waiting in this container is lost if the next
        # invocation runs in another one.
        assert stack.messages_waiting() == running["total"] - running["failed"]
        if len(invokes.calls) < invocations:
            payload = None
            continue
        request = invokes.calls[-1]
        assert (request["FunctionName"], request["InvocationType"]) == (SPLITTER_ARN, "Event")
        payload = json.loads(request["Payload"])
        assert payload["Records"] == event["Records"]  # the same file, as Lambda's retry or a replay would
        assert payload["continue_after_orders"] == 4 * invocations
        assert running["total"] == 4 * invocations and not running["total_final"]

    assert invocations == 6  # 21 orders, 4 an invocation
    # Each order queued once across the 6 invocations: 21 less the 2 the splitter refused itself.
    assert stack.messages_waiting() == 19
    stack.drain(worker)

    imported = report(import_id)
    assert (imported["status"], imported["total"], imported["total_final"]) == ("completed_with_errors", 21, True)
    assert (imported["imported"], imported["duplicates"], imported["failed"]) == (18, 0, 3)
    assert sorted((e["line"], e["code"]) for e in imported["errors"]) == [
        (10, "unknown_sku"),
        (14, "invalid_number"),
        (23, "order_reopened"),
    ]
    assert all(stored_order("market", f"ext-{i:02d}") is not None for i in range(20) if i not in (7, 11))


# --- A worker killed between marking a line and counting it ------------------------------------------


def kill_between_marking_and_counting(monkeypatch: pytest.MonkeyPatch, lines: set[int]) -> list[dict[str, Any]]:
    """The counter update of the records of `lines` never happens: the worker dies after putting the
    line's marker (raised there: a killed worker's message comes back). The updates it would have
    made are returned, to play a worker that was only slow."""
    from functions.import_worker.app import container

    client = container().import_ledger._client
    put, update = client.put_item, client.update_item
    marked: list[int] = []  # the line of the marker put last
    held: list[dict[str, Any]] = []

    def putting(**request: Any) -> Any:
        key = request["Item"].get("id", {}).get("S", "")
        if key.startswith("import#"):
            marked.append(int(key.rsplit("#", 1)[1]))
        return put(**request)

    def dies_before_counting(**request: Any) -> Any:
        line = marked[-1] if marked else None
        if request.get("UpdateExpression", "").startswith("ADD #counter") and line in lines - {h["line"] for h in held}:
            held.append({"line": line, "request": request})
            raise RuntimeError("killed between marking the line and counting it")
        return update(**request)

    monkeypatch.setattr(client, "put_item", putting)
    monkeypatch.setattr(client, "update_item", dies_before_counting)
    return held


def recount(minutes_later: float = 31) -> Any:
    from datetime import timedelta

    from core.import_recount import StuckImportRecount
    from core.models import utc_now
    from functions.adapters.aws_errors import pass_stopper
    from functions.import_worker.app import container

    later = utc_now() + timedelta(minutes=minutes_later)
    return StuckImportRecount(container().import_ledger, lambda: later, outage=pass_stopper).run()


def test_a_line_marked_by_a_worker_killed_before_counting_it_is_counted_by_the_recount_once(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch
):
    rows = [csv_row("ext-1"), csv_row("ext-2", "NOPE"), csv_row("ext-3"), csv_row("ext-4", quantity="x")]
    held = kill_between_marking_and_counting(monkeypatch, {2, 3})  # ext-1 (imported), ext-2 (unknown sku)
    import_id = split(stack, "incoming/killed.csv", csv_file(*rows))
    stack.drain(worker)  # the killed lines' messages come back, find their markers, count nothing

    short = report(import_id)
    assert [h["line"] for h in held] == [2, 3]
    assert (short["status"], short["total"], short["imported"], short["failed"]) == ("running", 4, 1, 1)
    assert recount(minutes_later=5).completed == []  # not idle long enough: workers may be at it

    done = recount()

    assert done.completed == [import_id]
    ended = report(import_id)
    assert (ended["status"], ended["imported"], ended["duplicates"], ended["failed"]) == (
        "completed_with_errors",
        2,
        0,
        2,
    )
    assert sorted((e["line"], e["code"]) for e in ended["errors"]) == [(3, "unknown_sku"), (5, "invalid_number")]
    # A worker that was only slow counts now: refused, nothing counted twice.
    from botocore.exceptions import ClientError

    from functions.import_worker.app import container

    for slow in held:
        with pytest.raises(ClientError, match="ConditionalCheckFailed"):
            container().import_ledger._client.update_item(**slow["request"])
    assert recount().completed == []  # ended: nothing more
    assert report(import_id) == ended


def test_an_import_whose_last_order_ends_above_a_footer_row_reported_before_it_is_recounted_down_to_the_footer(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch
):
    # A spreadsheet's totals row under the last order fails on its own line, reported before that
    # order, whose rows only end there. Had the file's last line been taken from the last order
    # reported (ext-2's, line 3), the recount would read the markers only that far and wait for good
    # for the footer's count, the import left running.
    from functions.import_splitter.readers import COLUMNS

    footer = ",".join("3" if column == "quantity" else "" for column in COLUMNS)
    kill_between_marking_and_counting(monkeypatch, {2})  # ext-1: imported, its count never made
    rows = [csv_row("ext-1"), csv_row("ext-2"), csv_row("ext-2", "MUG"), footer]
    import_id = split(stack, "incoming/footer.csv", csv_file(*rows))
    stack.drain(worker)
    short = report(import_id)
    assert (short["status"], short["total"], short["imported"], short["failed"]) == ("running", 3, 1, 1)

    assert recount().completed == [import_id]

    ended = report(import_id)
    assert (ended["status"], ended["imported"], ended["failed"]) == ("completed_with_errors", 2, 1)
    assert [(e["line"], e["code"]) for e in ended["errors"]] == [(5, "missing_channel")]


def test_an_import_with_a_line_not_marked_is_not_recounted_until_the_line_comes(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch
):
    from functions.import_worker.app import container

    held = kill_between_marking_and_counting(monkeypatch, {2})
    import_id = split(stack, "incoming/waiting.csv", csv_file(csv_row("ext-1"), csv_row("ext-2"), csv_row("ext-3")))
    parked = stack.sqs.receive_message(QueueUrl=stack.queue_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"])
    for message in parked["Messages"]:  # all but line 4's visible again: that one waits (in the DLQ, say)
        if message["MessageAttributes"]["line"]["StringValue"] != "4":
            stack.sqs.change_message_visibility(
                QueueUrl=stack.queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )
        else:
            parked = message
    stack.drain(worker)
    assert held and report(import_id)["status"] == "running"
    batch_gets: list[int] = []
    client = container().import_ledger._client
    get = client.batch_get_item
    markers = container().import_ledger._markers
    monkeypatch.setattr(
        client, "batch_get_item", lambda **r: batch_gets.extend(set(r["RequestItems"]) & {markers}) or get(**r)
    )

    assert recount().waiting == [import_id]
    read = len(batch_gets)
    assert read  # the markers were read
    assert recount().waiting == []  # found waiting, unchanged since: its markers not read again
    assert len(batch_gets) == read
    assert report(import_id)["status"] == "running"

    stack.sqs.change_message_visibility(
        QueueUrl=stack.queue_url, ReceiptHandle=parked["ReceiptHandle"], VisibilityTimeout=0
    )
    stack.drain(worker)  # redriven: counted, still one short (the killed line)
    assert recount().completed == [import_id]
    ended = report(import_id)
    assert (ended["status"], ended["imported"], ended["failed"]) == ("completed", 3, 0)


def test_a_recount_cut_short_by_its_pass_s_time_goes_on_where_it_stopped_at_the_next_run(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch
):
    from datetime import timedelta

    from core.import_recount import StuckImportRecount
    from core.models import utc_now
    from functions.adapters.imports import DynamoImportLedger
    from functions.import_worker.app import container

    monkeypatch.setattr(DynamoImportLedger, "RECOUNT_CHUNK", 2)  # lines 1-2, 3-4, 5-6
    kill_between_marking_and_counting(monkeypatch, {3, 4})  # ext-2's error: kept by the recount
    rows = [csv_row("ext-1"), csv_row("ext-2", "NOPE"), csv_row("ext-3"), csv_row("ext-4"), csv_row("ext-5")]
    import_id = split(stack, "incoming/cut.csv", csv_file(*rows))
    stack.drain(worker)
    later = utc_now() + timedelta(minutes=31)
    recounts = StuckImportRecount(container().import_ledger, lambda: later)
    answers = iter([False, False, False, True])  # the pass's import, then two chunks of markers

    cut = recounts.run(time_up=lambda: next(answers, True))

    assert cut.cut_short == [import_id] and report(import_id)["status"] == "running"
    reads: list[str] = []
    ledger = container().import_ledger
    get = ledger._client.batch_get_item

    def reading(**request: Any) -> Any:
        reads.extend(key["id"]["S"] for key in request["RequestItems"].get(ledger._markers, {}).get("Keys", []))
        return get(**request)

    monkeypatch.setattr(ledger._client, "batch_get_item", reading)
    assert recounts.run().completed == [import_id]
    # From where it stopped; then line 3's marker again, for the error of the failure it counted.
    assert [int(key.rsplit("#", 1)[1]) for key in reads] == [5, 6, 3]
    ended = report(import_id)
    assert (ended["status"], ended["imported"], ended["failed"]) == ("completed_with_errors", 4, 1)
    assert [(e["line"], e["code"]) for e in ended["errors"]] == [(3, "unknown_sku")]


def test_a_recount_that_dies_after_setting_the_counters_is_ended_by_the_next_pass_with_its_errors(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch
):
    # The recount's counters are written (the import marked recounted, no longer short of its
    # total), then the write of a recounted error is throttled: the import must not stay running.
    kill_between_marking_and_counting(monkeypatch, {3})  # ext-2: unknown sku, its count never made
    rows = [csv_row("ext-1"), csv_row("ext-2", "NOPE"), csv_row("ext-3")]
    import_id = split(stack, "incoming/died.csv", csv_file(*rows))
    stack.drain(worker)
    refused = refuse_once(monkeypatch, lambda pk: pk.endswith("#ERRORS"), "ThrottlingException", "put_item")

    with pytest.raises(Exception, match="rate of requests exceeds"):
        recount()

    assert refused == [f"IMPORT#{import_id}#ERRORS"]
    counted = report(import_id)
    assert (counted["status"], counted["imported"], counted["failed"], counted["errors"]) == ("running", 2, 1, [])
    assert recount().completed == [import_id]
    ended = report(import_id)
    assert (ended["status"], ended["imported"], ended["failed"]) == ("completed_with_errors", 2, 1)
    assert [(e["line"], e["code"]) for e in ended["errors"]] == [(3, "unknown_sku")]


def test_a_recount_keeps_the_errors_of_every_failure_it_counts_up_to_the_report_s_limit(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch
):
    # More failed lines left marked and uncounted than the 100 errors a recount once carried on the
    # import's item: every one is counted, and listed with its line while the report has room.
    from core.import_service import Outcome
    from core.imports import LineError
    from core.models import utc_now
    from functions.import_worker.app import container

    monkeypatch.setattr("functions.adapters.imports.MAX_REPORTED_ERRORS", 104)
    ledger = container().import_ledger
    ledger.begin("imp_many", "s3://b/many.csv", utc_now())
    for line in (2, 3):
        ledger.record("imp_many", line, Outcome.FAILED, LineError(line, f"ext-{line}", "unknown_sku", "no"), utc_now())
    killed = set(range(4, 109))  # 105 failures marked, never counted
    kill_between_marking_and_counting(monkeypatch, killed)
    for line in sorted(killed, reverse=True):
        with pytest.raises(RuntimeError, match="killed"):
            ledger.record(
                "imp_many", line, Outcome.FAILED, LineError(line, f"ext-{line}", "unknown_sku", "no"), utc_now()
            )
    ledger.finish_reading("imp_many", "csv", 107, utc_now(), last_line=108)

    assert recount().completed == ["imp_many"]

    ended = report("imp_many")
    assert (ended["status"], ended["failed"]) == ("completed_with_errors", 107)
    # The two counted first, then the recount's by line, up to the report's 104.
    assert [e["line"] for e in ended["errors"]] == list(range(2, 106))
    assert ended["errors"][-1] == {"line": 105, "external_id": "ext-105", "code": "unknown_sku", "message": "no"}


def test_a_recount_that_set_the_counters_before_lines_were_kept_ends_with_the_errors_it_carried(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch
):
    # A recount running when the recount began to keep the failures' lines instead of their errors
    # had already set the counters and left, on the import's item, the errors it counted (at most
    # what the report had room for), and died before ending it. The pass ends it with them.
    from core.import_service import Outcome
    from core.imports import LineError
    from core.models import utc_now
    from functions.adapters.dynamodb import timestamp
    from functions.adapters.imports import _error_fields, _import_key, _marker_id
    from functions.import_worker.app import container

    monkeypatch.setattr("functions.adapters.imports.MAX_REPORTED_ERRORS", 5)
    ledger, now = container().import_ledger, utc_now()
    errors = {line: LineError(line, f"ext-{line}", "unknown_sku", f"no sku on line {line}") for line in range(2, 8)}
    ledger.begin("imp_old", "s3://b/old.csv", now)
    for line in (2, 3):  # counted by their workers: the report's first two errors
        ledger.record("imp_old", line, Outcome.FAILED, errors[line], now)
    for line in range(4, 8):  # marked by workers killed before counting
        ledger._client.put_item(
            TableName=ledger._markers,
            Item={"id": {"S": _marker_id("imp_old", line)}, "outcome": {"S": "failed"},
                  "error": {"M": _error_fields(errors[line])}},
        )  # fmt: skip
    # What that recount wrote: the counters, and the errors it counted, up to the report's room.
    carried = [{"M": _error_fields(errors[line])} for line in (4, 5, 6)]
    ledger._client.update_item(
        TableName=ledger._table,
        Key=_import_key("imp_old"),
        UpdateExpression="SET #total = :six, total_final = :true, last_line = :seven, #failed = :six, "
        "recounted = :recounted, updated_at = :now",
        ExpressionAttributeNames={"#total": "total", "#failed": "failed"},
        ExpressionAttributeValues={":six": {"N": "6"}, ":seven": {"N": "7"}, ":true": {"BOOL": True},
                                   ":recounted": {"M": {"after": {"N": "2"}, "errors": {"L": carried}}},
                                   ":now": {"S": timestamp(now)}},
    )  # fmt: skip
    assert report("imp_old")["status"] == "running"

    assert recount().completed == ["imp_old"]

    ended = report("imp_old")
    assert (ended["status"], ended["total"], ended["failed"]) == ("completed_with_errors", 6, 6)
    assert [(e["line"], e["external_id"], e["message"]) for e in ended["errors"]] == [
        (line, f"ext-{line}", f"no sku on line {line}") for line in range(2, 7)
    ]
    assert recount().completed == []  # ended: nothing more
    assert report("imp_old") == ended


def skipped(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    """The imports the recount's pass logged it skips (read before last_line was kept)."""
    return [
        (record.import_id, record.source)
        for record in caplog.records
        if record.getMessage().startswith("import short of its total not recounted")
    ]


def test_an_import_read_before_its_last_line_was_kept_is_recounted_once_its_event_is_replayed(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    # Read whole and left short by a killed worker before the splitter kept `last_line`: the
    # recount cannot know where its markers end. The file's S3 event, replayed, reads the file
    # again for it (queuing nothing: every order was queued or recorded), and the pass recounts.
    from functions.adapters.imports import _import_key
    from functions.import_splitter.app import lambda_handler as splitter
    from functions.import_worker.app import container
    from tests.integration.import_support import context

    kill_between_marking_and_counting(monkeypatch, {3})
    rows = [csv_row("ext-1"), csv_row("ext-2", "NOPE"), csv_row(""), csv_row("ext-3")]
    import_id = split(stack, "incoming/old.csv", csv_file(*rows))
    stack.drain(worker)
    client, table = container().import_ledger._client, container().import_ledger._table
    client.update_item(TableName=table, Key=_import_key(import_id), UpdateExpression="REMOVE last_line")
    assert recount(minutes_later=5).completed == [] and not skipped(caplog)  # not idle yet: not stuck
    assert recount().completed == [] and report(import_id)["status"] == "running"
    # Each pass says so, naming the import and what to do: otherwise only GET /imports shows it.
    assert skipped(caplog) == [(import_id, f"s3://{stack.bucket}/incoming/old.csv")]
    assert "replay its file's S3 event" in caplog.records[-1].getMessage()

    splitter(stack.s3_event("incoming/old.csv"), context("ImportSplitterFunction", 900))

    assert stack.messages_waiting() == 0
    kept = client.get_item(TableName=table, Key=_import_key(import_id))["Item"]
    assert (kept["last_line"]["N"], kept["total"]["N"]) == ("5", "4")
    assert recount(minutes_later=5).completed == []  # the replay moved it: idle 30 minutes first
    assert recount().completed == [import_id]
    ended = report(import_id)
    assert (ended["status"], ended["imported"], ended["failed"]) == ("completed_with_errors", 2, 2)
    assert sorted((e["line"], e["code"]) for e in ended["errors"]) == [(3, "unknown_sku"), (4, "missing_external_id")]
    splitter(stack.s3_event("incoming/old.csv"), context("ImportSplitterFunction", 900))  # ended: nothing read
    assert report(import_id) == ended


def test_a_continuation_retried_and_delivered_twice_counts_and_reports_every_line_once(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch
):
    # Lambda retries a continuation that failed (twice by default) and may deliver one twice: each
    # reads the rest of the file again. Every order is counted once, every bad row reported once on
    # its line, across the boundary (ext-04 is two rows, lines 6-7, right after it); ext-05's bad
    # quantity is recorded by the splitter itself, by the retry and by the twin.
    from functions.import_splitter.app import container as splitter_container
    from functions.import_splitter.app import lambda_handler as splitter
    from tests.integration.import_support import context

    invokes = AsyncInvokes()
    monkeypatch.setattr(type(splitter_container()), "lambda_", property(lambda self: invokes))
    rows = [csv_row(f"ext-{i:02d}", "NOPE" if i == 6 else "TSHIRT", "x" if i in (2, 5) else "1") for i in range(10)]
    rows[5:5] = [csv_row("ext-04", "MUG", "2")]
    import_id = stack.put_file("incoming/twice.csv", csv_file(*rows))
    splitter(stack.s3_event("incoming/twice.csv"), RunningShort(orders=4))
    continuation = json.loads(invokes.calls[-1]["Payload"])
    assert continuation["continue_after_orders"] == 4

    files = splitter_container().import_files
    real_open, opened = files.open, []

    def unreadable_once(*args: Any) -> Any:
        opened.append(args)
        if len(opened) == 1:
            raise ConnectionError("S3 went away")
        return real_open(*args)

    monkeypatch.setattr(files, "open", unreadable_once)
    with pytest.raises(ConnectionError):
        splitter(continuation, RunningShort(orders=4))
    assert report(import_id)["status"] == "failed"  # split_interrupted: Lambda retries the event
    splitter(continuation, RunningShort(orders=4))  # the retry: orders 5-8, handed on again
    splitter(continuation, context("ImportSplitterFunction", 900))  # delivered twice: 5-10, to the end
    splitter(json.loads(invokes.calls[-1]["Payload"]), context("ImportSplitterFunction", 900))  # read: nothing
    stack.drain(worker)

    ended = report(import_id)
    assert (ended["status"], ended["total"], ended["imported"], ended["duplicates"], ended["failed"]) == (
        "completed_with_errors", 10, 7, 0, 3,
    )  # fmt: skip
    assert [(e["line"], e["external_id"], e["code"]) for e in ended["errors"]] == [
        (4, "ext-02", "invalid_number"),
        (8, "ext-05", "invalid_number"),
        (9, "ext-06", "unknown_sku"),
    ]
    assert stored_order("market", "ext-04").lines[0].quantity == 1 and len(stored_order("market", "ext-04").lines) == 2


# --- An order number reused with other content -------------------------------------------------------


def stored_without_its_request_hash(channel: str, external_id: str) -> None:
    """The order as one placed before capture kept its request's hash: its created entry without it."""
    from functions.adapters.dynamodb import _entries
    from functions.import_worker.app import container

    order_id = order_id_for(channel, external_id)
    created = container().orders.history(order_id)[0]
    assert "request_hash" in created.detail  # kept now: what this stands in for had none
    detail = {key: value for key, value in created.detail.items() if key != "request_hash"}
    orders = container().order_repository._orders
    orders._client.update_item(
        TableName=orders._table,
        Key={"id": {"S": order_id}},
        UpdateExpression="SET history[0] = :created",
        ExpressionAttributeValues={":created": _entries([created.model_copy(update={"detail": detail})])["L"][0]},
    )


def monday_imported(stack: ImportAws) -> None:
    """ext-1 and ext-2 imported from incoming/monday.csv (split, and every message delivered): by
    the file's first test to ask, copied into each later one's tables (written_once). The file
    itself is not copied: nothing reads it again."""

    def imported() -> None:
        split(stack, "incoming/monday.csv", csv_file(csv_row("ext-1"), csv_row("ext-2")))
        stack.drain(worker)
        assert stack.messages_waiting() == stack.messages_waiting(stack.dlq_url) == 0

    written_once(stack.tables, "monday imported", imported)


@pytest.mark.parametrize(
    "changed",
    [
        {"sku": "MUG"},
        {"quantity": "3"},
        {"ship_line1": "9 Other St"},
        {"customer_email": "grace@example.com"},
    ],
    ids=["other sku", "other quantity", "other address", "other customer"],
)
def test_a_csv_order_number_reused_with_other_content_is_an_error_on_its_line_and_the_same_content_a_duplicate(
    stack: ImportAws, changed: dict[str, str]
):
    # A feed that reuses order numbers, or a corrected order sent again under its number, was
    # counted among the duplicates with no line in the report: the merchant never learned that
    # order was not taken.
    from core.shown_references import history_shown
    from functions.import_worker.app import container

    monday_imported(stack)
    first = stored_order("market", "ext-1")

    again = split(stack, "incoming/tuesday.csv", csv_file(csv_row("ext-1", **changed), csv_row("ext-2")))
    stack.drain(worker)

    imported = report(again)
    assert (imported["status"], imported["imported"], imported["duplicates"], imported["failed"]) == (
        "completed_with_errors",
        0,
        1,
        1,
    )
    (error,) = imported["errors"]
    assert (error["line"], error["external_id"], error["code"]) == (2, "ext-1", "duplicate_external_id")
    assert first.id in error["message"] and "other content" in error["message"]
    assert "or change that order" in error["message"]  # pending: an edit still takes it
    assert stored_order("market", "ext-1") == first
    # The request's hash is the system's own: never shown in the order's history.
    assert all("request_hash" not in (e.detail or {}) for e in history_shown(container().orders.history(first.id)))


def test_a_number_reused_for_an_order_that_has_ended_says_it_can_no_longer_be_changed_only_sent_under_a_new_one(
    stack: ImportAws,
):
    # A cut-over walk: an order the old system exported was declined (or cancelled) here, and the
    # corrected row sent again under its number was told "or change that order"; the order has
    # ended (or shipped), and an edit of it is 409. The line names its status and the one way left.
    from functions.import_worker.app import container

    monday_imported(stack)
    first = container()._sweep_cancellation.cancel(order_id_for("market", "ext-1"), "customer asked", "key_admin")
    assert first.status.value == "cancelled"

    again = split(stack, "incoming/tuesday.csv", csv_file(csv_row("ext-1", quantity="2")))
    stack.drain(worker)

    (error,) = report(again)["errors"]
    assert (error["line"], error["code"]) == (2, "duplicate_external_id")
    assert f"{first.id} is cancelled and can no longer be changed" in error["message"]
    assert "or change that order" not in error["message"]
    assert "send it under a new external_id" in error["message"]
    assert stored_order("market", "ext-1") == first


def test_a_json_line_whose_external_id_is_a_number_is_an_error_on_its_line_never_a_poison_message(
    stack: ImportAws,
):
    # A feed that writes its order numbers as JSON numbers: its orders are refused on their lines,
    # and the others imported; none waits in the dead-letter queue.
    numbered = order_body(channel="market", external_id=1001, lines=[{"sku": "TSHIRT", "quantity": 1}])
    named = order_body(channel="market", external_id="ext-2", lines=[{"sku": "MUG", "quantity": 1}])
    import_id = split(stack, "incoming/numbers.jsonl", f"{json.dumps(numbered)}\n{json.dumps(named)}\n".encode())

    stack.drain(worker)

    assert stack.messages_waiting(stack.dlq_url) == 0
    done = report(import_id)
    assert (done["status"], done["imported"], done["failed"]) == ("completed_with_errors", 1, 1)
    assert [(e["line"], e["external_id"], e["code"]) for e in done["errors"]] == [(1, None, "validation_error")]


def test_a_json_lines_order_number_reused_with_other_content_is_an_error_on_its_line(stack: ImportAws):
    def jsonl(*bodies: dict[str, Any]) -> bytes:
        return "".join(json.dumps(body) + "\n" for body in bodies).encode()

    one = order_body(channel="market", external_id="ext-1", lines=[{"sku": "TSHIRT", "quantity": 1}])
    two = order_body(channel="market", external_id="ext-2", lines=[{"sku": "MUG", "quantity": 1}])
    split(stack, "incoming/monday.jsonl", jsonl(one, two))
    stack.drain(worker)

    corrected = {**one, "lines": [{"sku": "TSHIRT", "quantity": 1}, {"sku": "MUG", "quantity": 2}]}
    # The same order written another way (keys in another order, a default sent) is the same content.
    same = {"fulfillment": {"type": "ship"}, **dict(reversed(list(two.items())))}
    again = split(stack, "incoming/tuesday.jsonl", jsonl(same, corrected))
    stack.drain(worker)

    imported = report(again)
    assert (imported["status"], imported["imported"], imported["duplicates"], imported["failed"]) == (
        "completed_with_errors",
        0,
        1,
        1,
    )
    assert [(e["line"], e["external_id"], e["code"]) for e in imported["errors"]] == [
        (2, "ext-1", "duplicate_external_id")
    ]
    assert order_id_for("market", "ext-1") in imported["errors"][0]["message"]
    assert [line.sku for line in stored_order("market", "ext-1").lines] == ["TSHIRT"]


def test_an_order_stored_before_requests_were_hashed_stays_a_duplicate_whatever_the_content(stack: ImportAws):
    split(stack, "incoming/monday.csv", csv_file(csv_row("ext-1")))
    stack.drain(worker)
    stored_without_its_request_hash("market", "ext-1")

    again = split(stack, "incoming/tuesday.csv", csv_file(csv_row("ext-1", quantity="3")))
    stack.drain(worker)

    imported = report(again)
    assert (imported["status"], imported["imported"], imported["duplicates"], imported["failed"]) == (
        "completed",
        0,
        1,
        0,
    )


def test_a_line_redelivered_after_its_order_was_put_counts_imported_never_a_reused_number(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch
):
    # The file imported before holds the order under other content; this import's line placed
    # nothing (a duplicate)... and a line whose first delivery put its order and died before
    # recording it is its own order, imported.
    from functions.adapters.imports import DynamoImportLedger

    import_id = split(stack, "incoming/orders.csv", csv_file(csv_row("ext-1", quantity="2")))

    def killed(*args: Any) -> Any:
        raise TimeoutError("the worker ran out of time")

    with monkeypatch.context() as patched:
        patched.setattr(DynamoImportLedger, "record", killed)
        stack.deliver_once(worker)
    assert stored_order("market", "ext-1") is not None

    stack.drain(worker)

    imported = report(import_id)
    assert (imported["status"], imported["imported"], imported["duplicates"], imported["failed"]) == (
        "completed",
        1,
        0,
        0,
    )


def test_a_direct_order_reusing_a_placed_order_s_number_with_other_content_is_rejected_and_logged(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):

    counted = metrics_counted(monkeypatch)
    body = order_body(channel="erp", external_id="erp-7", lines=[{"sku": "TSHIRT", "quantity": 1}])
    stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=json.dumps(body))
    stack.drain(worker)
    placed = stored_order("erp", "erp-7")

    caplog.set_level(logging.INFO)
    other = {**body, "lines": [{"sku": "MUG", "quantity": 4}]}
    for sent in (other, body):  # another order under the number; then the same order sent again
        stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=json.dumps(sent))
        stack.drain(worker)

    assert counted == ["ImportedOrders", "RejectedOrders", "DuplicateOrders"]
    (rejected,) = [r for r in caplog.records if r.getMessage() == "order from the import queue rejected"]
    assert (rejected.code, rejected.external_id) == ("duplicate_external_id", "erp-7")
    assert placed.id in rejected.reason
    assert stored_order("erp", "erp-7") == placed


# --- A count whose answer was lost -------------------------------------------------------------------


@pytest.mark.parametrize(
    "attempts",
    [
        ["applied, answer lost", "throttled", "throttled"],
        ["applied, answer lost", "applied"],
        ["not applied, answer lost", "applied"],
        ["never sent", "never sent", "never sent"],
    ],
    ids=["applied then throttled", "applied then applied again", "not applied", "never sent"],
)
def test_a_line_s_count_is_never_applied_twice_nor_lost_when_its_attempts_fail(
    stack: ImportAws, monkeypatch: pytest.MonkeyPatch, attempts: list[str]
):
    # A line's count is an ADD to its import's item. DynamoDB applied it and its answer timed out;
    # botocore retried it: answered, the line was counted twice; throttled past the retries, its
    # marker was flagged uncounted and the redelivery counted it again (3 orders of 2, the import
    # ended early). And an ADD no attempt of which reached DynamoDB (no connection) left the
    # marker as if counted: the redelivery counted nothing, the import one short until the recount.
    import botocore.endpoint
    from botocore.awsrequest import AWSResponse
    from botocore.exceptions import EndpointConnectionError, ReadTimeoutError
    from moto.core.botocore_stubber import MockRawResponse
    from moto.core.models import botocore_stubber

    from functions.import_worker.app import container

    import_id = split(stack, "incoming/orders.csv", csv_file(csv_row("ext-1"), csv_row("ext-2")))
    made: list[str] = []
    first: list[bytes] = []  # the first count's request: botocore sends each attempt of it alike

    def attempt(request: Any, **kwargs: Any) -> Any:
        """Runs before moto, which answers what this leaves: one answered here is kept from it (it
        sees every request) until the last handler, moto_again."""
        if "#counter" not in json.loads(request.body or b"{}").get("ExpressionAttributeNames", {}):
            return None  # anything but a count
        first[:] = first or [request.body]
        if request.body != first[0] or len(made) == len(attempts):
            return None  # another count (the other line's, a redelivery's), or one more attempt
        made.append(attempts[len(made)])
        if made[-1] == "never sent":
            raise EndpointConnectionError(endpoint_url=request.url)
        if made[-1] == "not applied, answer lost":
            raise ReadTimeoutError(endpoint_url=request.url)
        if made[-1] == "throttled":
            error = {"__type": "com.amazonaws.dynamodb.v20120810#ThrottlingException", "message": "slow down"}
            answer = AWSResponse(request.url, 400, {}, MockRawResponse(json.dumps(error).encode()))
        else:
            answer = botocore_stubber(event_name="before-send.dynamodb.UpdateItem", request=request)
            if made[-1] == "applied, answer lost":
                raise ReadTimeoutError(endpoint_url=request.url)
        botocore_stubber.enabled = False
        return answer

    def moto_again(**kwargs: Any) -> None:
        botocore_stubber.enabled = True

    class Clock:  # botocore's backoff between attempts, not slept here
        time = staticmethod(botocore.endpoint.time.time)

        @staticmethod
        def sleep(seconds: float) -> None:
            pass

    monkeypatch.setattr(botocore.endpoint, "time", Clock)
    events = container().dynamodb.meta.events
    events.register_first("before-send.dynamodb.UpdateItem", attempt, unique_id="attempt")
    # moto answers every service's before-send: a handler of that event runs after it, after this one.
    events.register_last("before-send", moto_again, unique_id="moto-again")
    try:
        stack.drain(worker)
    finally:
        events.unregister("before-send.dynamodb.UpdateItem", unique_id="attempt")
        events.unregister("before-send", unique_id="moto-again")
        botocore_stubber.enabled = True

    if made[0] == "not applied, answer lost":
        # Not retried (it might have been applied): the line is marked, one short, as when a
        # worker dies between marking and counting it; the recount of its markers counts it.
        assert (report(import_id)["status"], report(import_id)["imported"]) == ("running", 1)
        assert recount().completed == [import_id]
    done = report(import_id)
    assert (done["status"], done["total"], done["imported"], done["duplicates"], done["failed"]) == (
        "completed", 2, 2, 0, 0,
    )  # fmt: skip
    if made[0] != "never sent":
        assert made == made[:1]  # never retried once an attempt may have been applied
