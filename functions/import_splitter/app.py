"""S3 `incoming/` → the import queue: streams each new file and queues its orders in batches."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import S3Event
from aws_lambda_powertools.utilities.data_classes.s3_event import S3EventRecord

from core.import_service import ImportSource
from core.imports import import_id_for
from functions.bootstrap import WarmContainer
from functions.import_splitter.readers import read_orders

logger = Logger()
# The template sets the namespace; the default keeps a stray import (a test) from breaking flushes.
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "OMS"))
container = WarmContainer()


def split_object(record: S3EventRecord) -> None:
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
    started = splitter.split(source, lambda: read_orders(files.open(bucket, key, version_id, etag), key))
    logger.info("import split" if started else "import already read", extra={"queued": queue.sent})
    metrics.add_metric(name="ImportOrdersQueued", unit=MetricUnit.Count, value=queue.sent)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> None:
    # S3 sends one record per event; an exception makes Lambda retry the event (twice), and a
    # retry resumes the import: lines already recorded are not counted again.
    for record in S3Event(event).records:
        split_object(record)
