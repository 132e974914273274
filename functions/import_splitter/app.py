"""S3 `incoming/` → the import queue: streams each new file and queues its orders in batches."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import S3Event
from aws_lambda_powertools.utilities.data_classes.s3_event import S3EventRecord

from core.deadline import Deadline
from core.import_service import ImportSource
from core.imports import import_id_for
from functions.adapters.imports import LambdaSplitContinuation, continued_after
from functions.bootstrap import WarmContainer
from functions.import_splitter.readers import read_orders
from functions.masked_logs import function_logger

logger = function_logger()
# The template sets the namespace; the default keeps a stray import (a test) from breaking flushes.
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "OMS"))
container = WarmContainer()
# A split hands the rest of its file on (an asynchronous invocation of this function) once less
# than this is left of its 15 minutes: enough to send its last batch, write its progress and invoke.
HAND_OFF_RESERVE_MILLIS = 60_000


def split_object(record: S3EventRecord, event: dict[str, Any], context: Any) -> None:
    bucket = record.s3.bucket.name
    key = unquote_plus(record.s3.get_object.key)  # S3 URL-encodes keys in events ("a b.csv" -> "a+b.csv")
    if key.endswith("/"):
        # A folder (the S3 console's "Create folder" puts an empty object named so), not a file.
        logger.info("folder skipped: not a file to import")
        return
    # "null" is the version S3 gives an upload to a bucket whose versioning is suspended: every
    # upload of a key has it, so it tells them apart no more than no version does (the ETag does).
    version_id = record.s3.get_object.version_id
    version_id = None if version_id in (None, "", "null") else version_id
    etag = record.s3.get_object.etag or None
    import_id = import_id_for(bucket, key, version_id or etag or "")
    logger.append_keys(import_id=import_id)
    files = container().import_files
    splitter, queue = container().import_splitter()
    source = ImportSource(import_id=import_id, uri=f"s3://{bucket}/{key}")
    after = continued_after(event)
    handed_on: list[int] = []

    def hand_off(done: int) -> None:
        # This record alone: the continuation is of this file. The client is made only for this.
        continuation = LambdaSplitContinuation(container().lambda_, context.invoked_function_arn)
        continuation({"Records": [record.raw_event]}, done)
        handed_on.append(done)

    started = splitter.split(
        source,
        lambda: read_orders(files.open(bucket, key, version_id, etag), key),
        resume_after=after,
        time_up=Deadline(context.get_remaining_time_in_millis, HAND_OFF_RESERVE_MILLIS),
        hand_off=hand_off,
    )
    if handed_on:
        logger.info(
            "import split continues in a new invocation",
            extra={"queued": queue.sent, "after_orders": after, "continues_after_orders": handed_on[0]},
        )
    else:
        logger.info(
            "import split" if started else "import already read", extra={"queued": queue.sent, "after_orders": after}
        )
    metrics.add_metric(name="ImportOrdersQueued", unit=MetricUnit.Count, value=queue.sent)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> None:
    # S3 sends one record per event; an exception makes Lambda retry the event (twice), and a
    # retry resumes the import: lines already recorded are not counted again. A continuation (the
    # event a split that ran short of time handed its file on with) carries the same record.
    for record in S3Event(event).records:
        split_object(record, event, context)
