"""Shipping labels in S3: stored by key, handed out as links signed when an order is read."""

from __future__ import annotations

import functools
import re
from typing import Any
from urllib.parse import unquote, urlsplit

from botocore.config import Config

from core.models import Order
from core.ports import LabelStore
from functions.adapters.aws_clients import aws_client

# Short on purpose: a link is signed for each read, so it only has to outlive one download. On
# AWS it also dies with the signing role's session token (hours at most), whatever it says.
LABEL_LINK_SECONDS = 15 * 60
_EXTENSIONS = {"application/pdf": "pdf", "image/png": "png"}
# Orders written before links were signed at read time hold a 7-day URL to the same object: the
# bucket's virtual host on S3 (<bucket>.s3[.<region>].amazonaws.com/<key>) or path-style on a
# configured endpoint (the local stack's: <endpoint>/<bucket>/<key>).
_LEGACY_KEY = re.compile(r"labels/ord_[a-z2-7]+/shp_[a-z2-7]+\.[a-z]+")
# What follows the bucket's name in its virtual host: s3.amazonaws.com, s3.<region>.amazonaws.com,
# s3-<region>.amazonaws.com (and .cn); never another bucket whose name merely starts with ours.
_S3_HOST = re.compile(r"\.s3(?:[.-][a-z0-9-]+)?\.amazonaws\.com(?:\.cn)?")
# A label stored under the key of a parcel booked again ("<shipment id>-<n>", core.ids.booking_key).
_BOOKED_AGAIN = re.compile(r"labels/(?P<order>ord_[a-z2-7]+)/(?P<key>(?P<shipment>shp_[a-z2-7]+)-[0-9]+)\.[a-z]+")


def with_booking_keys_from_labels(order: Order) -> Order:
    """`order` with the booking key of each shipment that Order.booking_keys does not name taken
    from its stored label, which is put under the key its booking was made under. An order stored
    before booking_keys existed names none, though a parcel booked again after an edit or a
    reject then was booked under a new key: a cancel of that booking must name it. (For an order
    stored since, the two agree.) A label the carrier hosts names no key: the shipment id stays."""
    keys = {}
    for shipment in order.shipments:
        found = _BOOKED_AGAIN.fullmatch(shipment.label_url or "")
        named = shipment.id in order.booking_keys
        if found and not named and (found["order"], found["shipment"]) == (order.id, shipment.id):
            keys[shipment.id] = found["key"]
    # model_copy, unvalidated: the order as read, never written as it is. Each version written
    # after it is validated whole (Order._next), these keys with it.
    return order.model_copy(update={"booking_keys": {**order.booking_keys, **keys}}) if keys else order


class S3Labels(LabelStore):
    def __init__(self, bucket: str, client: Any | None = None):
        self._bucket = bucket
        self._client = client

    @functools.cached_property
    def _s3(self) -> Any:
        # SigV4 links (X-Amz-Expires): some regions and botocore versions would presign with SigV2.
        # Virtual-hosted on the region's own endpoint (<bucket>.s3.<region>.amazonaws.com): botocore
        # otherwise signs links for the legacy global name (<bucket>.s3.amazonaws.com), which S3
        # redirects while a bucket outside us-east-1 is new (the signature, made for that host,
        # then fails) and refuses in the newer regions: the label link would not open. An endpoint
        # configured instead of AWS's (AWS_ENDPOINT_URL_S3: the local stack) keeps botocore's own
        # choice, path-style there: a bucket name before its host would not resolve.
        # A directory bucket (S3 Express One Zone, LabelsZoneId) is signed with this role's own
        # credentials, not botocore's default S3 Express session's: a link signed with a session's
        # dies with it, in 5 minutes, and links live LABEL_LINK_SECONDS. S3 authorizes each such
        # request as s3express:CreateSession on the bucket. No effect on any other bucket.
        if self._client is not None:
            return self._client
        no_session = {"disable_s3_express_session_auth": True}
        client = aws_client(
            "s3", config=Config(signature_version="s3v4", s3={"addressing_style": "virtual", **no_session})
        )
        host = urlsplit(client.meta.endpoint_url).hostname or ""
        if host.endswith((".amazonaws.com", ".amazonaws.com.cn")):
            return client
        return aws_client("s3", config=Config(signature_version="s3v4", s3=no_session))

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

    def _legacy_key(self, url: str) -> str | None:
        """The key of this bucket's object a legacy stored `url` links to; None for a URL that is
        not this bucket's. A carrier's hosted label whose path merely has a label key's shape (a
        carrier filing labels under the OMS's reference, "ord_…/shp_…") is no link to the bucket:
        signed for that key, it opened another order's label, or none."""
        parts = urlsplit(url)
        host, path, bucket = (parts.hostname or "").lower(), unquote(parts.path), self._bucket
        if not bucket:
            return None  # no bucket of this function's: a link to none of its objects
        if host.startswith(bucket) and _S3_HOST.fullmatch(host.removeprefix(bucket)):
            found = _LEGACY_KEY.fullmatch(path.removeprefix("/"))
        else:
            found = _LEGACY_KEY.fullmatch(path.removeprefix(f"/{bucket}/")) if path.startswith(f"/{bucket}/") else None
        return found.group(0) if found is not None else None

    def link(self, key: str) -> str:
        if key.startswith(("http://", "https://")):
            legacy = self._legacy_key(key)
            if legacy is None:
                return key  # not one of ours (a carrier's hosted label): shown as stored
            key = legacy
        return self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": self._require_bucket(), "Key": key}, ExpiresIn=LABEL_LINK_SECONDS
        )
