"""The suite's requests to moto carry botocore's Authorization header but for its signature
(tests/request_signing.py); presigned URLs, and every request while moto checks signatures, are
signed as botocore signs them."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import botocore.auth
import pytest
from botocore.config import Config
from moto import mock_aws
from moto.core import set_initial_no_auth_action_count

from tests import request_signing
from tests.integration.conftest import KEEP_BOTO3_SESSION

NOW = datetime.datetime(2026, 12, 6, 1, 2, 3)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto, with botocore's clock stopped: a request signed again gets the same date."""
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: NOW)
    with mock_aws(config=KEEP_BOTO3_SESSION):
        yield


def _client(service: str, region: str = "us-east-1", **kwargs: Any) -> tuple[Any, list[dict[str, Any]]]:
    """A client of the test's own (hooked, so never served again: tests/client_pool.py), and the
    headers of every request it sends, as moto receives them."""
    client = boto3.client(service, region_name=region, **kwargs)
    sent: list[dict[str, Any]] = []
    client.meta.events.register("before-send", lambda request, **_: sent.append(_text(request.headers)))
    return client, sent


def _text(headers: Any) -> dict[str, str]:
    return {name: value.decode() if isinstance(value, bytes) else value for name, value in headers.items()}


@contextmanager
def signed_by_botocore() -> Iterator[None]:
    """botocore's own add_auth, for the block."""
    ours = botocore.auth.SigV4Auth.add_auth
    botocore.auth.SigV4Auth.add_auth = request_signing.signed_add_auth  # type: ignore[method-assign]
    try:
        yield
    finally:
        botocore.auth.SigV4Auth.add_auth = ours  # type: ignore[method-assign]


def _without_signature(authorization: str) -> tuple[str, str]:
    head, _, signature = authorization.rpartition("Signature=")
    return head, signature


@pytest.mark.parametrize(
    "service, call",
    [
        ("dynamodb", lambda client: client.list_tables()),
        ("sqs", lambda client: client.list_queues()),
        ("s3", lambda client: client.list_buckets()),
        ("s3", lambda client: client.put_object(Bucket="signing", Key="a b/c", Body=b"body")),
    ],
)
@pytest.mark.usefixtures("clock")
def test_a_request_carries_botocores_headers_but_for_the_signature(service: str, call: Any) -> None:
    client, sent = _client(service, "eu-west-1")
    if service == "s3":
        client.create_bucket(Bucket="signing", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    call(client)
    ours = sent[-1]
    with signed_by_botocore():
        call(client)
    botocores = sent[-1]
    head, signature = _without_signature(ours.pop("Authorization"))
    botocores_head, botocores_signature = _without_signature(botocores.pop("Authorization"))
    assert head == botocores_head  # the Credential moto reads (key, date, region, service), SignedHeaders
    assert f"/20261206/eu-west-1/{service}/aws4_request," in head
    assert signature == request_signing.UNCOMPUTED != botocores_signature
    ours.pop("amz-sdk-invocation-id"), botocores.pop("amz-sdk-invocation-id")  # one per request
    assert ours == botocores  # X-Amz-Date, S3's X-Amz-Content-SHA256, everything else


@pytest.mark.usefixtures("clock")
def test_a_presigned_url_is_signed_as_botocore_signs_it() -> None:
    client, _ = _client("s3", config=Config(signature_version="s3v4"))  # as functions/adapters/labels.py
    params = {"Bucket": "labels", "Key": "a.pdf"}
    ours = client.generate_presigned_url("get_object", Params=params, ExpiresIn=900)
    with signed_by_botocore():
        botocores = client.generate_presigned_url("get_object", Params=params, ExpiresIn=900)
    assert ours == botocores
    assert parse_qs(urlsplit(ours).query)["X-Amz-Signature"] != [request_signing.UNCOMPUTED]


@pytest.mark.usefixtures("clock")
def test_while_moto_checks_signatures_requests_are_signed() -> None:
    client, sent = _client("dynamodb")

    @set_initial_no_auth_action_count(1000)
    def list_tables() -> None:
        client.list_tables()

    list_tables()
    signed = sent[-1]["Authorization"]
    with signed_by_botocore():
        client.list_tables()
    assert signed == sent[-1]["Authorization"]
    client.list_tables()  # and no longer once it stops checking
    assert _without_signature(sent[-1]["Authorization"])[1] == request_signing.UNCOMPUTED
