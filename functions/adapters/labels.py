"""Shipping labels in S3: stored by key, handed out as links signed when an order is read."""

from __future__ import annotations

import functools
import re
from typing import Any
from urllib.parse import unquote, urlsplit

from botocore.config import Config

from core.ports import LabelStore
from functions.adapters.aws_clients import aws_client

# Short on purpose: a link is signed for each read, so it only has to outlive one download. On
# AWS it also dies with the signing role's session token (hours at most), whatever it says.
LABEL_LINK_SECONDS = 15 * 60
_EXTENSIONS = {"application/pdf": "pdf", "image/png": "png"}
# Orders written before links were signed at read time hold a 7-day URL to the same object.
_LEGACY_KEY = re.compile(r"(?:^|/)(labels/ord_[a-z2-7]+/shp_[a-z2-7]+\.[a-z]+)$")


class S3Labels(LabelStore):
    def __init__(self, bucket: str, client: Any | None = None):
        self._bucket = bucket
        self._client = client

    @functools.cached_property
    def _s3(self) -> Any:
        # SigV4 links (X-Amz-Expires): some regions and botocore versions would presign with SigV2.
        return self._client or aws_client("s3", config=Config(signature_version="s3v4"))

    def _require_bucket(self) -> str:
        if not self._bucket:
            raise RuntimeError("LABELS_BUCKET is not set for this function")
        return self._bucket

    def put_label(self, order_id: str, shipment_id: str, document: bytes, content_type: str) -> str:
        bucket = self._require_bucket()
        key = f"labels/{order_id}/{shipment_id}.{_EXTENSIONS.get(content_type, 'bin')}"
        # A retried step writes the same key with the same bytes: idempotent.
        self._s3.put_object(Bucket=bucket, Key=key, Body=document, ContentType=content_type)
        return key

    def link(self, key: str) -> str:
        if key.startswith(("http://", "https://")):
            legacy = _LEGACY_KEY.search(unquote(urlsplit(key).path))
            if legacy is None:
                return key  # not one of ours: shown as stored
            key = legacy.group(1)
        return self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": self._require_bucket(), "Key": key}, ExpiresIn=LABEL_LINK_SECONDS
        )
