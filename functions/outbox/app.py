"""Orders stream consumer (the outbox): starts the order workflow for each new order, again for
each release from a hold, again for an order sent back to be sourced (an edit or a reject
of an allocated or backordered order), and once for each cancel, to finish its clean-up."""

from __future__ import annotations

import json
import os
import zlib
from typing import Any

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import (
    DynamoDBRecord,
    DynamoDBRecordEventName,
)

from core.log_text import escape_for_log
from core.status import OrderStatus, can_transition
from functions.adapters import order_codec
from functions.bootstrap import WarmContainer
from functions.masked_logs import function_logger
from functions.stream_batches import InOrderStreamProcessor, batch_response

logger = function_logger()
# The template sets the namespace; the default keeps a stray import (a test) from breaking flushes.
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "OMS"))
# A record is not started with less than this left of the function's 10 s Timeout (the rest of the
# batch is reported failed unprocessed; the stream hands it out again from there, where a timeout
# had the batch retried whole and bisected, its orders started again). A record is one
# StartExecution: throttled, botocore's standard mode tries it 3 times with up to 1 s and 2 s of
# backoff between (functions/adapters/aws_clients.py), about 3 s; a call that hangs (3 attempts of
# 3 s) outlives any reserve the Timeout leaves room for.
RECORD_RESERVE_MILLIS = 4_000
processor = InOrderStreamProcessor(reserve_millis=RECORD_RESERVE_MILLIS)
container = WarmContainer()


# A release back to one of these has workflow steps left to run (released to `allocated`, an order
# has only its shipments left, which are API calls; released to `backordered`, its ReserveStock
# takes what arrived while it was held, as no arrival fills a held order, and its CreateShipments
# allocates it once every unit is reserved). The template's filter names them too.
RESUMED_BY_WORKFLOW = frozenset(
    {OrderStatus.PENDING.value, OrderStatus.AUTHORIZED.value, OrderStatus.BACKORDERED.value}
)
# An edit or a location's reject sends an order back from these to `authorized` to be sourced again.
SENT_BACK_FROM = frozenset({OrderStatus.ALLOCATED.value, OrderStatus.BACKORDERED.value})
# A cancel is written before its clean-up (core/cancellation.py): whoever wrote it (a request, the
# jeopardy scan, the pickup expiry, the workflow) may die before releasing the stock and voiding the
# authorization, and nothing would look again. The record of the cancel starts an execution that
# finishes it (CancelOrder, retried, then CompensationFailed for an operator); a clean-up done
# already makes it a few reads.
CANCELLED_FROM = frozenset(s.value for s in OrderStatus if can_transition(s, OrderStatus.CANCELLED))


def start_workflow(record: DynamoDBRecord) -> None:
    # The template's filters pass INSERTs (a new order item is a new order), releases, the MODIFYs
    # that send an order back to `authorized` from `allocated` or `backordered` (its steps skip
    # what is done and source it again) and those that cancel it (CANCELLED_FROM); the check here
    # keeps any other record (a replay, a wider filter) from starting anything. A restart is named
    # by the version that caused it, so a redelivered record is the same start and another
    # release, edit, reject or cancel a new one.
    order_id = record.dynamodb.keys["id"]
    new_image = record.dynamodb.new_image or {}
    old_image = record.dynamodb.old_image or {}
    finish_cancel = False
    if record.event_name is DynamoDBRecordEventName.INSERT:
        rerun = None
    elif _released(old_image, new_image):
        rerun = f"release-v{new_image.get('version')}"
    elif _sent_back(old_image, new_image):
        rerun = f"v{new_image.get('version')}"
    elif _cancelled(old_image, new_image):
        rerun, finish_cancel = f"cancel-v{new_image.get('version')}", True
    else:
        return
    channel, correlation_id = _trace(new_image, record.raw_event.get("dynamodb", {}).get("NewImage") or {})
    with logger.append_context_keys(order_id=order_id, channel=channel or None, correlation_id=correlation_id or None):
        try:
            started = container().workflow_starter.start(
                order_id, channel=channel, correlation_id=correlation_id, rerun=rerun, finish_cancel=finish_cancel
            )
        except Exception as error:
            # The failure queue's record names the batch's shard and sequence numbers, not the order,
            # and the stream keeps them 24 hours: this line names the order and the start it was for
            # (a cancel's clean-up leaves its stock and authorization held until one runs), which
            # the OutboxFailuresAlarm runbook starts by hand past those hours.
            logger.warning(
                "order workflow not started: the stream retries it",
                extra={"rerun": rerun, "finish_cancel": finish_cancel, "error": type(error).__name__,
                       "reason": escape_for_log(str(error)[:500])},
            )  # fmt: skip
            raise
        logger.info("order workflow", extra={"started": started, "rerun": rerun})
    if started:
        metrics.add_metric(name="OrderWorkflowsStarted", unit=MetricUnit.Count, value=1)


def _released(old_image: dict[str, Any], new_image: dict[str, Any]) -> bool:
    return old_image.get("status") == OrderStatus.ON_HOLD.value and new_image.get("status") in RESUMED_BY_WORKFLOW


def _sent_back(old_image: dict[str, Any], new_image: dict[str, Any]) -> bool:
    return old_image.get("status") in SENT_BACK_FROM and new_image.get("status") == OrderStatus.AUTHORIZED.value


def _cancelled(old_image: dict[str, Any], new_image: dict[str, Any]) -> bool:
    return old_image.get("status") in CANCELLED_FROM and new_image.get("status") == OrderStatus.CANCELLED.value


def _trace(image: dict[str, Any], typed_image: dict[str, Any]) -> tuple[str, str]:
    """The order's channel, and what placed it: the API request id its created entry recorded,
    else that entry's actor (an import's id and line, or the queue's sender). The entry is read
    from the record's typed image (DynamoDB JSON): a compressed entry is a binary, an older one
    a JSON string."""
    channel = str(image.get("channel") or "")
    history = typed_image.get("history", {}).get("L") or []
    try:
        created = json.loads(order_codec.stored_json(history[0])) if history else {}
    except (TypeError, ValueError, KeyError, zlib.error):
        created = {}
    correlation_id = (created.get("detail") or {}).get("request_id") or created.get("actor") or ""
    return channel, str(correlation_id)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    # Partial batch response: the stream retries from the first failed record, and the records
    # after it are failed unprocessed (an order's cancel never starts before its own earlier
    # record), as are those there is no time left for (RECORD_RESERVE_MILLIS); a batch failed whole
    # is bisected, then its record handed to the on-failure queue.
    answer = batch_response(event=event, record_handler=start_workflow, processor=processor, context=context)
    processor.say_if_cut_short(logger, event)
    return answer
