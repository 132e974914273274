"""The access-log function on moto: what storing a batch of queued reads asks of DynamoDB."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from core.access_log import OrderRead
from functions.adapters.access_log import _arrays
from tests.integration.test_access_log_api import Context

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def a_listed_page(request: int, orders: int) -> str:
    """The message a page of `GET /orders?limit=<orders>` queues: one read per order listed, one array."""
    reads = [
        OrderRead(
            request_id=f"req-{request:03d}", order_id=f"ord_{n:024d}", at=T0 + timedelta(seconds=request),
            actor="key_poller", action="list", detail={"label_urls": [f"shp_{n:024d}"]},
        ).model_dump_json()
        for n in range(orders)
    ]  # fmt: skip
    (body,) = _arrays(reads)
    return body


def test_a_full_batch_of_listed_pages_is_stored_in_a_few_requests_not_one_per_read(aws):
    # A storefront polling GET /orders?limit=100 queues a message of 100 reads per page; the mapping
    # hands the function 10 messages at once (a backlog after an outage always does). A PutItem per
    # read made 1,000 requests in one 10-second invocation (each signed and sent in turn, on a
    # 256 MB function's seventh of a CPU): it timed out, the whole batch came back, timed out again,
    # and after 5 receives went to the dead-letter queue: those reads were missing from the log.
    # (Pages of 30 here, to keep the test cheap: 2 requests a message, where it made 30.)
    from functions.access_log.app import container, lambda_handler

    container.forget()
    requests: list[str] = []
    events = container().dynamodb.meta.events
    events.register("before-call.dynamodb", count := lambda model, **_: requests.append(model.name))
    event = {
        "Records": [{"messageId": f"m{n}", "body": a_listed_page(n, 30), "eventSource": "aws:sqs"} for n in range(10)]
    }
    try:
        assert lambda_handler(event, Context()) == {"batchItemFailures": []}
    finally:
        events.unregister("before-call.dynamodb", count)

    assert len(requests) == 10 * 2, requests[:5]  # 25 reads a request
    store = container().access_log_store
    for order in (0, 24, 29):
        reads = store.reads(f"ord_{order:024d}")
        assert [(r.request_id, r.actor, r.action) for r in reads] == [
            (f"req-{n:03d}", "key_poller", "list") for n in range(10)
        ]
        assert reads[0].detail == {"label_urls": [f"shp_{order:024d}"]}
    container.forget()


def test_a_message_naming_one_read_twice_stores_it_once_and_is_not_poison(aws):
    # A read re-queued by hand from the API's log (the runbook), beside the message that did arrive,
    # or a list's read sent twice in one array: one item, and the message succeeds.
    from functions.access_log.app import container, lambda_handler

    container.forget()
    read = OrderRead(request_id="req-1", order_id="ord_" + "a" * 24, at=T0, actor="key_a", action="get")
    body: Any = "[" + ",".join([read.model_dump_json()] * 2) + "]"
    event = {"Records": [{"messageId": "m1", "body": body, "eventSource": "aws:sqs"}]}

    assert lambda_handler(event, Context()) == {"batchItemFailures": []}
    assert container().access_log_store.reads(read.order_id) == [read]
    container.forget()


class Left(Context):
    """An invocation with `millis` left at every ask."""

    def __init__(self, millis: int):
        self._millis = millis

    def get_remaining_time_in_millis(self) -> int:
        return self._millis


def test_messages_there_is_no_time_left_for_are_left_to_the_next_batch_and_stored_once(aws):
    # A batch of 10 pages of 100 reads (4 BatchWriteItem each) at a table at its limit (each
    # request's unprocessed writes asked again after 0.75 s of backoffs) ran past the function's
    # 10 s Timeout: SQS handed out the whole batch again after the visibility timeout, every message
    # stored again and received once more towards the dead-letter queue's 5. With less than
    # RECORD_RESERVE_MILLIS left, no message after the first is started: the rest are reported
    # failed unprocessed (received again, but stored once: by the delivery that has time for them).
    from functions.access_log.app import RECORD_RESERVE_MILLIS, container, lambda_handler

    container.forget()
    reads = [
        OrderRead(request_id=f"req-{n}", order_id=f"ord_{n:024d}", at=T0, actor="key_a", action="get") for n in range(3)
    ]
    records = [
        {"messageId": f"m{n}", "body": read.model_dump_json(), "eventSource": "aws:sqs"} for n, read in enumerate(reads)
    ]
    store = container().access_log_store

    answer = lambda_handler({"Records": records}, Left(RECORD_RESERVE_MILLIS - 1))

    assert answer == {"batchItemFailures": [{"itemIdentifier": "m1"}, {"itemIdentifier": "m2"}]}
    assert [store.reads(read.order_id) for read in reads] == [[reads[0]], [], []]
    assert lambda_handler({"Records": records[1:]}, Left(RECORD_RESERVE_MILLIS)) == {"batchItemFailures": []}
    assert [store.reads(read.order_id) for read in reads] == [[read] for read in reads]
    container.forget()
