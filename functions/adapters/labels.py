"""Shipping labels in S3, handed out as presigned URLs."""

from __future__ import annotations

import functools
from typing import Any

from botocore.config import Config

from core.ports import LabelStore
from functions.adapters.aws_clients import aws_client

LABEL_URL_SECONDS = 7 * 24 * 60 * 60  # the longest a SigV4 presigned URL may live
_EXTENSIONS = {"application/pdf": "pdf", "image/png": "png"}


class S3Labels(LabelStore):
    def __init__(self, bucket: str, client: Any | None = None, public_endpoint: str | None = None):
        self._bucket = bucket
        self._client = client
        # Locally, URLs must point at the emulated endpoint a browser can reach.
        self._public_endpoint = public_endpoint

    @functools.cached_property
    def _s3(self) -> Any:
        return self._client or aws_client("s3")

    @functools.cached_property
    def _signer(self) -> Any:
        if not self._public_endpoint:
            return self._s3
        return aws_client(
            "s3",
            endpoint_url=self._public_endpoint,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def put_label(self, order_id: str, shipment_id: str, document: bytes, content_type: str) -> str:
        if not self._bucket:
            raise RuntimeError("LABELS_BUCKET is not set for this function")
        key = f"labels/{order_id}/{shipment_id}.{_EXTENSIONS.get(content_type, 'bin')}"
        # A retried step writes the same key with the same bytes: idempotent.
        self._s3.put_object(Bucket=self._bucket, Key=key, Body=document, ContentType=content_type)
        return self._signer.generate_presigned_url(
            "get_object", Params={"Bucket": self._bucket, "Key": key}, ExpiresIn=LABEL_URL_SECONDS
        )
