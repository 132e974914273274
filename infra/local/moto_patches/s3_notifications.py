"""The `s3_notifications` patch: moto matches a bucket's notification configuration, and its call
to the function goes to the registered S3NotificationMapping (infra/local/event_sources.py) its
configuration id (or function) names. moto's CompleteMultipartUpload stores the object with its
PutObject, which notifies ObjectCreated:Put first; S3 sends only CompleteMultipartUpload."""

from __future__ import annotations

import threading
from typing import Any

from infra.local.moto_patches import AppliedBy, MotoPatch, Replacements

_completing = threading.local()  # inside moto's CompleteMultipartUpload


def _replacements() -> Replacements:
    from moto.s3 import notifications
    from moto.s3.models import S3Backend

    original_invoke = notifications.__dict__["_invoke_awslambda"]
    original_complete = S3Backend.__dict__["complete_multipart_upload"]

    def complete_multipart_upload(backend: Any, *args: Any, **kwargs: Any) -> Any:
        _completing.active = True
        try:
            return original_complete(backend, *args, **kwargs)
        finally:
            _completing.active = False

    def invoke_awslambda(account_id: str, event_body: Any, fn_arn: str, region_name: str) -> None:
        record = (event_body.get("Records") or [{}])[0]
        if getattr(_completing, "active", False) and record.get("eventName") == "ObjectCreated:Put":
            return
        # The mapping the configuration id names, else any of that function's (sort is stable).
        mappings = [m for m in PATCH.registrations() if m.function.arn == fn_arn]
        mappings.sort(key=lambda m: m.name != record.get("s3", {}).get("configurationId"))
        if mappings:
            mappings[0].enqueue(event_body)
        else:
            original_invoke(account_id, event_body, fn_arn, region_name)

    return {
        (notifications, "_invoke_awslambda"): invoke_awslambda,
        (S3Backend, "complete_multipart_upload"): complete_multipart_upload,
    }


PATCH = MotoPatch(
    "s3_notifications",
    applied_by=AppliedBy.STACK_REGISTRY,
    changes="S3's Lambda notifications reach the template's function in process (queued, invoked "
    "asynchronously as S3 does), and CompleteMultipartUpload notifies "
    "ObjectCreated:CompleteMultipartUpload alone (moto also notifies ObjectCreated:Put).",
    expects={
        "moto.s3.notifications._invoke_awslambda": "(account_id, event_body, fn_arn, region_name)",
        "moto.s3.models.S3Backend.complete_multipart_upload": "(self, bucket_name, multipart_id, body)",
    },
    replacements=_replacements,
)
